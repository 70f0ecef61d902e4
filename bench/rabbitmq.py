"""The RabbitMQ a bench runs on: a vhost and a user of its own on the machine's broker, removed afterwards.

``rabbitmqctl`` (root, or a user allowed to run it) makes a vhost ``bench-<id>`` and a user with a
24-byte random password (the processes refuse a weak broker password: ``flask_outbox.credentials``),
granted everything on that vhost only; both are deleted when the bench ends, with every queue and
exchange the run declared. ``BENCH_AMQP_HOST`` (default ``127.0.0.1:5672``) names the broker.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.connection import Connection

from harness.rabbitmqctl import broker_password, rabbitmqctl

__all__ = ["BROKERS", "bench_broker", "queue_messages", "queue_types", "rabbitmq_version"]

BROKERS = ("redis", "rabbitmq")
"""``make bench BROKER=…`` / ``make bench-relay BROKER=…`` (``BENCH_BROKER``): where the stacks publish."""
AMQP_HOST = os.environ.get("BENCH_AMQP_HOST", "127.0.0.1:5672")


@contextmanager
def bench_vhost() -> Iterator[str]:
    """A fresh vhost and user on the local RabbitMQ; yields the ``amqp://`` URL, deletes both after."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    password = broker_password()
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("add_vhost", name)
        try:
            rabbitmqctl("set_permissions", "-p", name, name, ".*", ".*", ".*")
            yield f"amqp://{name}:{password}@{AMQP_HOST}/{name}"
        finally:
            rabbitmqctl("delete_vhost", name)
    finally:
        rabbitmqctl("delete_user", name)


@contextmanager
def bench_broker(broker: str, redis_url: str) -> Iterator[str]:
    """The broker URL the stacks of a bench use: ``redis_url`` as it is, or a bench vhost on RabbitMQ."""
    if broker not in BROKERS:
        raise SystemExit(f"BENCH_BROKER={broker!r}: one of {', '.join(BROKERS)}")
    if broker == "redis":
        yield redis_url
        return
    with bench_vhost() as url:
        yield url


def rabbitmq_version(url: str) -> str:
    """The broker's version, from the connection's server properties (what the AMQP handshake says)."""
    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        connection.connect()
        properties: dict[str, Any] = connection.connection.server_properties
    version = properties.get("version", "?")
    return version.decode() if isinstance(version, bytes) else str(version)


def queue_types(url: str) -> dict[str, str]:
    """Each queue of the URL's vhost and its type (``classic``, ``quorum``), as the broker reports them."""
    vhost = url.rsplit("/", 1)[-1]
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type")
    return dict(line.split("\t") for line in out.splitlines() if "\t" in line)


def queue_messages(url: str, queue: str) -> tuple[int, int]:
    """Take every message of ``queue`` (left empty): how many Celery messages, and how many outbox
    messages they carry (a batch task counts its ``messages``)."""
    tasks = carried = 0
    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            _args, kwargs, _embed = json.loads(message.body)
            tasks += 1
            carried += len(kwargs["messages"]) if "messages" in kwargs else 1
    return tasks, carried
