"""Pooled Postgres connections the server closed are replaced at checkout, with no round trip
(``flask_outbox.db``, ``install_engine_events``), by the same rule for the API's, the workers' and the
relays' engines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask_outbox.db import create_db_engine, engine_options, install_engine_events
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from shared.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["api", "worker"])
def engine(request: pytest.FixtureRequest, pg_settings: Settings) -> Iterator[Engine]:
    """An engine made as the API makes its own (Flask-SQLAlchemy's options), or as workers and relays do."""
    url = pg_settings.orders_database_url
    if request.param == "api":
        made = create_engine(url, **engine_options(url, 1, statement_timeout_ms=5000, pool_timeout=5))
        install_engine_events(made)
    else:
        made = create_db_engine(url, pool_size=1)
    yield made
    made.dispose()


@pytest.fixture
def statements(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the engine sends, pings included (``do_ping`` goes through a cursor too)."""
    sent: list[str] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        sent.append("ping")
        return ping(dbapi_connection)

    @event.listens_for(engine, "before_cursor_execute")
    def _sent(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return sent


def _pid(conn: Connection) -> int:
    return int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return _pid(conn)


def _terminate(engine: Engine, pid: int) -> None:
    """End a backend from another session, as a failover, a server restart or an idle timeout would;
    return once it has exited."""
    other = create_engine(engine.url.render_as_string(hide_password=False), poolclass=NullPool)
    try:
        with other.connect() as conn:
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    finally:
        other.dispose()


def test_a_live_pooled_connection_is_reused_without_a_ping(engine: Engine, statements: list[str]) -> None:
    pids = {_backend_pid(engine) for _ in range(20)}

    assert len(pids) == 1, "one pooled connection, reused"
    assert statements == ["SELECT pg_backend_pid()"] * 20, "no ping, no other round trip"


def test_a_connection_the_server_closed_is_replaced_at_checkout_without_an_error(
    engine: Engine, statements: list[str]
) -> None:
    first = _backend_pid(engine)
    _terminate(engine, first)

    second = _backend_pid(engine)  # no error: the checkout saw the socket closed and connected afresh

    assert second != first
    assert "ping" not in statements
    assert engine.pool.checkedout() == 0


def test_after_a_failover_every_pooled_connection_is_replaced(pg_settings: Settings) -> None:
    """Two pooled connections, both terminated: each is replaced at its own checkout, none fails."""
    engine = create_db_engine(pg_settings.orders_database_url, pool_size=2)
    try:
        with engine.connect() as one, engine.connect() as two:
            before = {_pid(one), _pid(two)}
        for pid in before:
            _terminate(engine, pid)
        with engine.connect() as one, engine.connect() as two:
            after = {_pid(one), _pid(two)}
        assert len(after) == 2
        assert not before & after
    finally:
        engine.dispose()
