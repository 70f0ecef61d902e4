"""Database helpers both services use: UTC timestamps, portable column types, engines."""

from __future__ import annotations

import select
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Integer,
    create_engine,
    event,
    exc,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

__all__ = [
    "BigIntPK",
    "JSONDocument",
    "UTCDateTime",
    "create_db_engine",
    "database_clock",
    "database_now",
    "engine_options",
    "install_engine_events",
    "is_postgres",
    "keepalive_connect_args",
    "utcnow",
]

BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
"""A 64-bit key that is still SQLite's auto-incrementing ``INTEGER PRIMARY KEY``."""

JSONDocument = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite would drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def database_clock(dialect: Dialect) -> ColumnElement[datetime] | datetime:
    """The current time for a statement: the database's clock on Postgres (``statement_timestamp()``),
    so every process stamps and compares times on one clock; Python's on SQLite (one machine).
    """
    if dialect.name == "postgresql":
        return func.statement_timestamp(type_=UTCDateTime())
    return utcnow()


def database_now(conn: Connection) -> datetime:
    """The database's current time (Postgres, one round trip); Python's on SQLite (one machine)."""
    if conn.dialect.name == "postgresql":
        now: datetime = conn.execute(text("SELECT now()")).scalar_one()
        return now
    return utcnow()


def is_postgres(engine_or_dialect: Engine | Dialect) -> bool:
    dialect = engine_or_dialect.dialect if isinstance(engine_or_dialect, Engine) else engine_or_dialect
    return dialect.name == "postgresql"


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Whether the server ended this idle pooled connection, seen without a round trip.

    A backend that ends (a restart, a failover's ``pg_terminate_backend``, an idle timeout) sends its
    FATAL message and closes the socket, so the socket of a connection resting in the pool has
    something to read; a live idle one has nothing. Polling the socket costs microseconds where a
    ``pool_pre_ping`` costs a round trip on every checkout.
    """
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    poller = select.poll()
    poller.register(dbapi_connection.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _drop_connections_the_server_closed(engine: Engine) -> None:
    """At checkout, replace a pooled connection the server closed (``_closed_by_server``).

    Raising ``DisconnectionError`` at checkout makes the pool discard it and connect afresh, so a
    failover or a server restart costs no statement, no request and no delivery. A server that
    vanished without a word (no FIN) is not seen here: the keepalives and ``tcp_user_timeout``
    (``keepalive_connect_args``) bound the statement that meets it.
    """

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if _closed_by_server(dbapi_connection):
            raise exc.DisconnectionError("the server closed this pooled connection")


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def engine_options(
    url: str,
    pool_size: int = 5,
    *,
    statement_timeout_ms: int = 0,
    idle_in_transaction_ms: int = 0,
    pool_timeout: float | None = None,
) -> dict[str, Any]:
    """Engine keyword arguments suited to the URL's backend.

    ``statement_timeout_ms`` (Postgres, 0: none) and ``pool_timeout`` are for request-serving
    engines, which must answer a 503 rather than wait on an overloaded database; relays and workers
    leave them unset, since their long batches and waits are expected. ``idle_in_transaction_ms``
    (Postgres, 0: none) ends a session left that long inside a transaction: a process that hangs
    mid-transaction would otherwise keep its row locks, and whatever needs those rows would wait behind
    it for good. No ``pool_pre_ping``: ``install_engine_events`` replaces connections the server closed
    without a round trip.
    """
    if url.startswith("sqlite"):
        # Several processes share the file in embedded mode: wait for locks instead of failing.
        return {"connect_args": {"timeout": 30}}
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size,
    }
    if pool_timeout is not None:
        options["pool_timeout"] = pool_timeout
    bounds = {
        "statement_timeout": int(statement_timeout_ms),
        "idle_in_transaction_session_timeout": int(idle_in_transaction_ms),
    }
    if server_options := " ".join(f"-c {name}={ms}" for name, ms in bounds.items() if ms):
        options["connect_args"] = {"options": server_options}
    return options


def keepalive_connect_args(bound_seconds: float) -> dict[str, Any]:
    """libpq TCP settings that notice a silent peer (host gone without a FIN) within ~``bound_seconds``.

    Without them a connection to a vanished server hangs for the kernel's keepalive default
    (~2 h). Keepalive probes start after a third of the bound, three probes a ninth apart; data
    left unacknowledged for the whole bound (``tcp_user_timeout``) also drops the connection.
    """
    return {
        "keepalives": 1,
        "keepalives_idle": max(1, int(bound_seconds / 3)),
        "keepalives_interval": max(1, int(bound_seconds / 9)),
        "keepalives_count": 3,
        "tcp_user_timeout": max(1000, int(bound_seconds * 1000)),
        "connect_timeout": max(2, int(bound_seconds / 3)),
    }


def create_db_engine(
    url: str, pool_size: int = 5, connect_args: dict[str, Any] | None = None, idle_in_transaction_ms: int = 0
) -> Engine:
    """An engine for ``url``; ``connect_args`` (libpq parameters) apply to Postgres only."""
    options = engine_options(url, pool_size, idle_in_transaction_ms=idle_in_transaction_ms)
    if connect_args and not url.startswith("sqlite"):
        options["connect_args"] = {**options.get("connect_args", {}), **connect_args}
    engine = create_engine(url, **options)
    install_engine_events(engine)
    return engine


def install_engine_events(engine: Engine) -> None:
    """WAL and foreign keys for SQLite engines; for Postgres ones, pooled connections the server
    closed are replaced at checkout (``_drop_connections_the_server_closed``)."""
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine)
    elif engine.dialect.name == "postgresql":
        _drop_connections_the_server_closed(engine)
