"""Database helpers both services use: UTC timestamps, portable column types, engines."""

from __future__ import annotations

import time
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


PING_AFTER_IDLE_SECONDS = 1.0
"""A pooled Postgres connection is pinged at checkout only after resting this long in the pool."""

_LAST_USED = "flask_outbox.db.last_used"


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for a connection that rested in the pool: a round trip per checkout
    saved under load, where an API's connections come back within milliseconds.

    A server restart or an idle timeout finds connections that waited; one in busy use that dies
    fails its statement, which SQLAlchemy sees as a disconnect: it invalidates the whole pool, so
    the next checkouts connect afresh (the request itself is a 503, as any mid-request outage).
    Raising ``DisconnectionError`` at checkout makes the pool retry with a new connection.
    """

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_LAST_USED, 0.0) < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # whatever the driver raises for a dead socket: connect afresh
            raise exc.DisconnectionError(str(error)) from error
        if not alive:
            raise exc.DisconnectionError("the connection did not answer its ping")


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
    pool_timeout: float | None = None,
    ping_only_after_idle: bool = False,
) -> dict[str, Any]:
    """Engine keyword arguments suited to the URL's backend.

    ``statement_timeout_ms`` (Postgres, 0: none) and ``pool_timeout`` are for request-serving
    engines, which must answer a 503 rather than wait on an overloaded database; relays and workers
    leave them unset, since their long batches and waits are expected. ``ping_only_after_idle``
    (request-serving engines too, with ``install_engine_events``): no ``pool_pre_ping`` on every
    checkout, see ``_ping_when_idle``; workers and relays keep it, so a failover that drops their
    connections costs them no failed delivery.
    """
    if url.startswith("sqlite"):
        # Several processes share the file in embedded mode: wait for locks instead of failing.
        return {"connect_args": {"timeout": 30}}
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_pre_ping": not ping_only_after_idle,
    }
    if pool_timeout is not None:
        options["pool_timeout"] = pool_timeout
    if statement_timeout_ms:
        options["connect_args"] = {"options": f"-c statement_timeout={int(statement_timeout_ms)}"}
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


def create_db_engine(url: str, pool_size: int = 5, connect_args: dict[str, Any] | None = None) -> Engine:
    """An engine for ``url``; ``connect_args`` (libpq parameters) apply to Postgres only."""
    options = engine_options(url, pool_size)
    if connect_args and not url.startswith("sqlite"):
        options["connect_args"] = {**options.get("connect_args", {}), **connect_args}
    engine = create_engine(url, **options)
    install_engine_events(engine)
    return engine


def install_engine_events(engine: Engine, *, ping_only_after_idle: bool = False) -> None:
    """WAL and foreign keys for SQLite engines; for Postgres ones made with ``ping_only_after_idle``
    (``engine_options``), the ping of connections that rested in the pool."""
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine)
    elif engine.dialect.name == "postgresql" and ping_only_after_idle:
        _ping_when_idle(engine)
