"""An overloaded orders database answers 503 with Retry-After, never a 500 or a hang (real Postgres).

Overload is made for real: every pooled connection checked out (pool timeout), or the orders table
locked by another transaction so the API's statement outlives its ``statement_timeout``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from flask import Flask
from flask_outbox import WorkerDatabase
from flask_outbox.db import create_db_engine
from sqlalchemy import Engine, text

from order_service import create_app
from order_service.extensions import db
from shared.config import Settings

pytestmark = pytest.mark.timeout(60)  # without the fix the locked-table request hangs: fail, don't stall CI

API_KEY = "osk_overload-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ORDER = {
    "customer_id": "cus_busy",
    "currency": "EUR",
    "lines": [{"sku": "A", "quantity": 1, "unit_amount": 1}],
}


def _app(settings: Settings, **changes: object) -> Iterator[Flask]:
    app = create_app(
        settings.model_copy(update={"api_keys": API_KEY, "rate_limit": "100000 per minute", **changes})
    )
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def small_pool_app(pg_settings: Settings) -> Iterator[Flask]:
    """Two connections at most (pool 1 + overflow 1), and a short wait for one."""
    yield from _app(pg_settings, api_pool_size=1, api_timeout_seconds=0.5)


@pytest.fixture
def short_timeout_app(pg_settings: Settings) -> Iterator[Flask]:
    yield from _app(pg_settings, api_timeout_seconds=0.3)


def _assert_503(response: object) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert response.mimetype == "application/problem+json"  # type: ignore[attr-defined]
    assert response.get_json()["type"].endswith("/unavailable")  # type: ignore[attr-defined]
    assert int(response.headers["Retry-After"]) >= 1  # type: ignore[attr-defined]


def test_an_exhausted_pool_is_a_503_after_the_pool_timeout(small_pool_app: Flask) -> None:
    client = small_pool_app.test_client()
    with small_pool_app.app_context(), ExitStack() as held:
        for _ in range(2):
            held.enter_context(db.engine.connect()).execute(text("SELECT 1"))
        started = time.monotonic()

        listing = client.get("/orders", headers=AUTH)
        placing = client.post("/orders", json=ORDER, headers={**AUTH, "Idempotency-Key": str(uuid.uuid4())})
        ready = client.get("/readyz")

        elapsed = time.monotonic() - started
    for response in (listing, placing, ready):
        _assert_503(response)
    assert elapsed < 10  # three waits of 0.5 s, not SQLAlchemy's default 30 s each
    assert client.get("/orders", headers=AUTH).status_code == 200  # and it recovers once connections return


def test_a_statement_over_the_timeout_is_a_503(short_timeout_app: Flask, orders_engine: Engine) -> None:
    client = short_timeout_app.test_client()
    with orders_engine.connect() as locker:
        locker.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()

        response = client.get("/orders", headers=AUTH)

        waited = time.monotonic() - started
        locker.rollback()
    _assert_503(response)
    assert 0.3 <= waited < 10
    assert client.get("/orders", headers=AUTH).status_code == 200


def test_the_statement_timeout_is_set_on_the_api_engine_only(pg_settings: Settings) -> None:
    app = create_app(pg_settings)
    relay_engine = create_db_engine(pg_settings.orders_database_url)
    try:
        with app.app_context(), db.engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "5s"  # the default, 5000 ms
        with relay_engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
    finally:
        relay_engine.dispose()
        with app.app_context():
            db.engine.dispose()


def test_api_and_worker_sessions_end_a_transaction_left_idle_past_their_bound(pg_settings: Settings) -> None:
    """A hung request or delivery must not keep its row locks: the API's sessions end a transaction idle
    longer than API_TIMEOUT_SECONDS, a worker's longer than BROKER_VISIBILITY_TIMEOUT (by then Redis has
    given its message to another process); an engine made without a bound (relays set theirs per session)
    has none."""
    app = create_app(pg_settings)
    worker_database = WorkerDatabase(pg_settings.orders_database_url, idle_in_transaction_seconds=60)
    plain = create_db_engine(pg_settings.orders_database_url)
    show = text("SHOW idle_in_transaction_session_timeout")
    try:
        with app.app_context(), db.engine.connect() as conn:
            assert conn.execute(show).scalar_one() == "5s"  # API_TIMEOUT_SECONDS' default
        with worker_database.engine.connect() as conn:
            assert conn.execute(show).scalar_one() == "1min"
        with plain.connect() as conn:
            assert conn.execute(show).scalar_one() == "0"
    finally:
        plain.dispose()
        worker_database.engine.dispose()
        with app.app_context():
            db.engine.dispose()
