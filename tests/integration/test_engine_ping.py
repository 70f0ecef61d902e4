"""The API's pooled Postgres connections are pinged at checkout only after resting in the pool
(``flask_outbox.db``, ``ping_only_after_idle``); workers' and relays' engines ping at every checkout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask_outbox.db import PING_AFTER_IDLE_SECONDS, create_db_engine, engine_options, install_engine_events
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from shared.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(pg_settings: Settings) -> Iterator[Engine]:
    """An engine made as the API makes its own."""
    url = pg_settings.orders_database_url
    engine = create_engine(url, **engine_options(url, 1, ping_only_after_idle=True))
    install_engine_events(engine, ping_only_after_idle=True)
    yield engine
    engine.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ping the pool sends (the dialect's ``do_ping``, as ``pool_pre_ping`` would use)."""
    sent: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        sent.append(1)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return sent


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)


def _terminate(engine: Engine, pid: int) -> None:
    """End a backend from another session, as a server restart or an idle timeout would."""
    other = create_db_engine(engine.url.render_as_string(hide_password=False), pool_size=1)
    try:
        with other.connect() as conn:
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        other.dispose()


def test_a_connection_back_in_use_within_the_idle_bound_is_not_pinged(
    engine: Engine, pings: list[int]
) -> None:
    pids = {_backend_pid(engine) for _ in range(20)}

    assert len(pids) == 1, "one pooled connection, reused"
    assert pings == []


def test_a_connection_that_rested_is_pinged_and_replaced_when_its_server_side_is_gone(
    engine: Engine, pings: list[int]
) -> None:
    first = _backend_pid(engine)
    _terminate(engine, first)
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.1)

    second = _backend_pid(engine)  # no error: the ping found it dead and the pool connected afresh

    assert pings == [1]
    assert second != first


def test_a_connection_killed_while_in_busy_use_fails_one_statement_then_the_pool_recovers(
    engine: Engine, pings: list[int]
) -> None:
    """Without a ping the first statement on it fails as a disconnect; SQLAlchemy invalidates the
    pool, and the next checkout connects afresh (an API request in between is a 503)."""
    first = _backend_pid(engine)
    _terminate(engine, first)

    with pytest.raises(DBAPIError) as failure:
        _backend_pid(engine)
    assert failure.value.connection_invalidated
    assert _backend_pid(engine) != first
    assert pings == []


def test_a_worker_engine_pings_every_checkout_so_a_dropped_connection_costs_no_delivery(
    pg_settings: Settings,
) -> None:
    engine = create_db_engine(pg_settings.orders_database_url, pool_size=1)
    try:
        first = _backend_pid(engine)
        _terminate(engine, first)

        assert _backend_pid(engine) != first  # no error: the pre-ping found it dead at once
    finally:
        engine.dispose()
