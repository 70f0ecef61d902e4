"""Connecting to RabbitMQ: one URL or kombu's failover list (``amqp://h1;amqp://h2;amqp://h3``)."""

from __future__ import annotations

from kombu.connection import Connection

__all__ = ["connect", "is_amqp_url"]


def is_amqp_url(url: str) -> bool:
    """``amqp://`` or ``amqps://`` (a failover list starts with one of them)."""
    return url.startswith(("amqp://", "amqps://"))


def connect(connection: Connection) -> Connection:
    """Open ``connection``, trying each host of a failover list once, in order; raises if none answers.

    An open AMQP connection has passed the handshake: the broker answered, took the credentials and
    opened the vhost. No waiting between hosts: the caller (a probe, the relay's broker wait) retries.
    """
    others = max(len(connection.alt) - 1, 0)  # kombu switches to the next host after each failure
    connection.ensure_connection(  # type: ignore[no-untyped-call]
        max_retries=others, interval_start=0, interval_step=0, interval_max=0
    )
    return connection
