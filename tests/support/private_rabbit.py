"""One private RabbitMQ node for a test that stops, kills or restarts its broker (``PrivateRedis``'s twin).

The node is a one-node ``RabbitCluster`` (tests/support/rabbit_cluster.py: its own name, ports, cookie
and folders; the machine's RabbitMQ on 5672 is never touched), with what a fault test needs of a broker:
``url``, ``start``, ``stop`` (graceful: SIGTERM, durable quorum queues and their messages kept), ``kill``
(SIGKILL of the Erlang VM) and ``restart``. Its one user comes from the node's config on first boot
(``default_user``), and readiness is an AMQP handshake: no ``rabbitmqctl`` call on the way up, which
takes seconds each on a loaded machine. A quorum queue's counts (``list_queues``, a passive declare's
``message_count``) are metrics refreshed on the queue's tick: 1 s here (5 s by default), and right
after a restart a passive declare read 0 of 50 recovered messages for over 10 s on the default tick.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from kombu.connection import Connection

from harness.rabbitmqctl import broker_password
from harness.waiting import wait_until
from tests.support.rabbit_cluster import NODE_CONFIG, RabbitCluster, RabbitNode, _read_pid

__all__ = ["PrivateRabbit"]

USER = "pipeline"
ADVANCED_CONFIG = "[{rabbit, [{quorum_tick_interval, 1000}]}].\n"
"""Quorum queues' metrics each second, so that the counts a test reads are at most a second old."""


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of its own under ``directory``; ``close`` removes it (``stop`` keeps its data)."""

    directory: Path
    password: str = field(default_factory=broker_password)
    """≥ 16 characters: the services refuse a weak broker password."""
    nodes: RabbitCluster = field(init=False)

    def __post_init__(self) -> None:
        self.nodes = RabbitCluster(self.directory, size=1, user=USER, password=self.password)

    @property
    def node(self) -> RabbitNode:
        return self.nodes.nodes[0]

    @property
    def url(self) -> str:
        return self.node.url(USER, self.password)

    @property
    def running(self) -> bool:
        return bool(self.nodes.nodes) and self.node.running

    def start(self, timeout: float = 90) -> PrivateRabbit:
        """Start the node (the first time: a fresh one with its user); returns once AMQP logins work."""
        if not self.nodes.nodes:
            self.nodes._prepare()
            config = self.node.directory / "rabbitmq.conf"
            config.write_text(
                NODE_CONFIG.format(port=self.node.port)
                + f"default_user = {USER}\ndefault_pass = {self.password}\n"
                + "default_permissions.configure = .*\ndefault_permissions.read = .*\n"
                + "default_permissions.write = .*\n"
            )
            (self.node.directory / "advanced.config").write_text(ADVANCED_CONFIG)
        assert not self.node.running, f"{self.node.node} is already running"
        self.nodes._launch(self.node)
        try:
            self.node.pid = wait_until(self._pid, timeout=timeout, interval=0.1, message="the node's pid")
            wait_until(self._accepting, timeout=timeout, interval=0.25, message=f"{self.node.node} on AMQP")
        except BaseException:
            print(self.nodes.tail(self.node))
            raise
        return self

    def _pid(self) -> int | None:
        process = self.node.process
        if process is not None and process.poll() is not None:
            tail = self.nodes.tail(self.node)
            raise RuntimeError(f"{self.node.node} exited ({process.returncode}):\n{tail}")
        return _read_pid(self.node.pid_file)

    def _accepting(self) -> bool:
        try:
            with Connection(self.url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
                connection.connect()
            return True
        except Exception:  # booting: refused, reset, or the login not there yet
            return False

    def stop(self, timeout: float = 60) -> None:
        """Graceful: SIGTERM (RabbitMQ shuts down cleanly on it); durable queues and messages stay on disk."""
        if not self.running:
            return
        assert self.node.pid is not None
        os.kill(self.node.pid, signal.SIGTERM)
        if self.node.process is not None:
            self.node.process.wait(timeout=timeout)
        wait_until(lambda: not self.running, timeout=timeout, message=f"{self.node.node} to stop")
        self.node.pid = None

    def kill(self) -> None:
        """SIGKILL of the Erlang VM: only what quorum queues had fsynced survives (all they confirmed)."""
        if self.running:
            self.nodes.kill(self.node)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Kill the node if it runs and remove its folders."""
        self.nodes.stop()

    def ctl(self, *args: str) -> str:
        return self.nodes.ctl(self.node, *args)

    def counts(self) -> tuple[int, int]:
        """(ready, unacknowledged) messages over every queue of the node (all of them are the test's)."""
        output = self.ctl(
            "list_queues", "-p", "/", "name", "messages_ready", "messages_unacknowledged",
            "--formatter", "json", "--quiet", "--timeout", "20",
        )  # fmt: skip
        rows = json.loads(output)
        ready = sum(int(row.get("messages_ready") or 0) for row in rows)
        unacked = sum(int(row.get("messages_unacknowledged") or 0) for row in rows)
        return ready, unacked

    def queued(self, queue: str) -> int:
        """Messages ready in ``queue`` (a passive declare: the count the broker reports to a client)."""
        with Connection(self.url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
            return int(connection.default_channel.queue_declare(queue, passive=True).message_count)

    def purge(self, *queues: str) -> int:
        """Purge each queue's ready messages (a broker losing them); how many the broker says it purged.

        AMQP's ``queue.purge`` rather than ``rabbitmqctl purge_queue``: the same operation, and its answer
        is the count the queue itself removed (a passive declare's count may be a stale metric).
        """
        with Connection(self.url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
            channel = connection.default_channel
            return sum(int(channel.queue_purge(queue) or 0) for queue in queues)
