"""A RabbitMQ vhost per test on the machine's broker, made and removed with ``rabbitmqctl``.

The vhosts of one test session share a user with a strong password (``BrokerUser``): ``guest:guest``
is refused by the processes' credential check (``flask_outbox.credentials``: 5 characters), as any
weak broker password is. ``rabbitmqctl`` takes seconds per call on a loaded machine: one user per
session, one vhost per test.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from harness.rabbitmqctl import broker_password, rabbitmqctl

__all__ = ["BrokerUser", "Vhost", "broker_user", "private_vhost", "rabbitmqctl", "rabbitmqctl_missing"]

AMQP_HOST = "127.0.0.1:5672"


def rabbitmqctl_missing() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl not found: these tests need a local RabbitMQ (CI installs one)"
    return None


@dataclass(frozen=True)
class Vhost:
    name: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{AMQP_HOST}/{self.name}"

    def queue_types(self) -> dict[str, str]:
        """Each queue's type (``classic``, ``quorum``), as the broker reports it."""
        lines = rabbitmqctl("list_queues", "-p", self.name, "--no-table-headers", "name", "type").splitlines()
        return dict(line.split("\t") for line in lines if "\t" in line)

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of ``queue``."""
        out = rabbitmqctl(
            "list_queues", "-p", self.name, "--no-table-headers", "name", "messages_ready",
            "messages_unacknowledged",
        )  # fmt: skip
        for line in out.splitlines():
            name, ready, unacked = line.split("\t")
            if name == queue:
                return int(ready), int(unacked)
        raise KeyError(queue)

    def consumers(self, queue: str) -> int:
        """Consumers the broker counts on ``queue`` (0 when it does not exist)."""
        out = rabbitmqctl("list_queues", "-p", self.name, "--no-table-headers", "name", "consumers")
        counts = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
        return int(counts.get(queue, 0))

    def grant(self, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        rabbitmqctl("set_permissions", "-p", self.name, self.user, configure, write, read)


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str


@contextmanager
def broker_user() -> Iterator[BrokerUser]:
    """A RabbitMQ user with a strong password (no permissions until a vhost grants some); deleted after."""
    user = BrokerUser(f"test-{uuid.uuid4().hex[:10]}", broker_password())
    rabbitmqctl("add_user", user.name, user.password)
    try:
        yield user
    finally:
        rabbitmqctl("delete_user", user.name)


@contextmanager
def private_vhost(user: BrokerUser) -> Iterator[Vhost]:
    """A new vhost on which ``user`` may do everything; deleted afterwards, with its queues."""
    vhost = Vhost(f"test-{uuid.uuid4().hex[:10]}", user.name, user.password)
    rabbitmqctl("add_vhost", vhost.name)
    try:
        vhost.grant()
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost.name)
