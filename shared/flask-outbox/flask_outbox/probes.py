"""Readiness checks a process runs on demand: can it reach its database and, if it needs one, its broker.

Each check raises on failure and is bounded in time (a probe that hangs is a failed probe
anyway, but it must not pile up threads): 3 s to connect, 3 s per statement or command.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import redis
from kombu.connection import Connection
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from flask_outbox.db import is_postgres
from flask_outbox.rabbitmq import connect, is_amqp_url

__all__ = ["Check", "broker_check", "database_check", "probe_engine", "run_checks"]

Check = Callable[[], None]
PROBE_TIMEOUT_S = 3


def probe_engine(url: str) -> Engine:
    """A connection per probe, none kept: a prefork parent must hold no connection its children inherit."""
    connect_args = {"connect_timeout": PROBE_TIMEOUT_S} if not url.startswith("sqlite") else {}
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def database_check(engine: Engine) -> Check:
    def check() -> None:
        with engine.connect() as conn:
            if is_postgres(engine):
                conn.execute(text(f"SET statement_timeout = {PROBE_TIMEOUT_S * 1000}"))
            conn.execute(text("SELECT 1"))

    return check


def broker_check(broker_url: str, broker_folder: Path) -> Check:
    """Redis: ``PING`` on one kept connection (re-opened after a failure); RabbitMQ: a connection opened
    (handshake, credentials, vhost) and closed, any host of a failover list; the file broker: its folder."""
    if is_amqp_url(broker_url):
        return _amqp_check(broker_url)
    if broker_url.startswith("filesystem://"):

        def folder_exists() -> None:
            if not broker_folder.is_dir():
                raise FileNotFoundError(f"broker folder {broker_folder} is missing")

        return folder_exists
    client = redis.Redis.from_url(
        broker_url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S, max_connections=2
    )
    lock = threading.Lock()

    def ping() -> None:
        with lock:
            client.ping()

    return ping


def _amqp_check(broker_url: str) -> Check:
    def handshake() -> None:
        options = {"read_timeout": PROBE_TIMEOUT_S, "write_timeout": PROBE_TIMEOUT_S}
        connection = Connection(  # type: ignore[no-untyped-call]
            broker_url, connect_timeout=PROBE_TIMEOUT_S, transport_options=options
        )
        with connection:
            connect(connection)

    return handshake


def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, str]]:
    """Run every check; ``(all passed, {name: "ok" or the error})``."""
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # a probe reports any failure; it never raises
            results[name] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        else:
            results[name] = "ok"
    return all(value == "ok" for value in results.values()), results
