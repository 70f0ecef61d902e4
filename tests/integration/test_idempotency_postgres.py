"""Idempotency-Key and the rate limit on the real servers: Postgres decides races, Redis counts.

The app is served over loopback by a threaded WSGI server, so concurrent retries really overlap
in separate connections and transactions, as they would behind gunicorn.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select, text
from werkzeug.serving import make_server

from order_service import create_app
from order_service.extensions import db
from order_service.models import Order, outbox
from shared.config import Settings

pytestmark = pytest.mark.integration

API_KEY = "osk_integration-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ORDER = {
    "customer_id": "cus_pg",
    "currency": "EUR",
    "lines": [{"sku": "BOOK-1", "quantity": 2, "unit_amount": 1250}],
}
RETRIES = 20


def _serve(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # Request threads joined by server_close: a client can read its response before the request's
    # teardown hands the connection back, and one handed back after the dispose below would be left
    # open in the old pool, for the garbage collector to report in whatever test runs then.
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def base_url(pg_settings: Settings) -> Iterator[str]:
    settings = pg_settings.model_copy(update={"api_keys": API_KEY, "rate_limit": "100000 per minute"})
    yield from _serve(create_app(settings))


@pytest.fixture
def api(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as client:
        yield client


def _counts(pg_settings: Settings, order_id: str | None = None) -> tuple[int, int]:
    engine = create_engine(pg_settings.orders_database_url)
    try:
        with engine.connect() as conn:
            orders = conn.scalar(select(func.count()).select_from(Order.__table__)) or 0
            rows = conn.scalar(select(func.count()).select_from(outbox)) or 0
            if order_id is not None:
                owned = conn.scalar(
                    select(func.count()).select_from(outbox).where(outbox.c.aggregate_id == order_id)
                )
                assert owned == rows
    finally:
        engine.dispose()
    return orders, rows


def test_twenty_concurrent_retries_with_one_key_place_exactly_one_order(
    api: httpx.Client, pg_settings: Settings
) -> None:
    headers = {"Idempotency-Key": f"concurrent-{uuid.uuid4()}"}
    start = threading.Barrier(RETRIES)

    def attempt(_: int) -> httpx.Response:
        start.wait(timeout=30)
        return api.post("/orders", json=ORDER, headers=headers)

    with ThreadPoolExecutor(max_workers=RETRIES) as pool:
        responses = list(pool.map(attempt, range(RETRIES)))

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, [r.text for r in responses if r.status_code not in {201, 409}]
    assert 201 in statuses
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    (order_id,) = ids
    final = api.post("/orders", json=ORDER, headers=headers)
    assert final.status_code == 201
    assert final.json()["id"] == order_id
    assert _counts(pg_settings, order_id) == (1, 1)


def test_sequential_retry_and_mismatch_on_postgres(api: httpx.Client, pg_settings: Settings) -> None:
    headers = {"Idempotency-Key": f"sequential-{uuid.uuid4()}"}
    first = api.post("/orders", json=ORDER, headers=headers)
    again = api.post("/orders", json=ORDER, headers=headers)
    other: dict[str, Any] = {**ORDER, "currency": "USD"}
    mismatch = api.post("/orders", json=other, headers=headers)

    assert (first.status_code, again.status_code, mismatch.status_code) == (201, 201, 422)
    assert again.json() == first.json()
    assert mismatch.headers["Content-Type"] == "application/problem+json"
    assert _counts(pg_settings) == (1, 1)


def test_bad_input_writes_nothing_on_postgres(api: httpx.Client, pg_settings: Settings) -> None:
    bodies: list[Any] = [
        {**ORDER, "customer_id": "nul\u0000byte"},
        {**ORDER, "lines": [{"sku": "A", "quantity": 1, "unit_amount": 1.5}]},
        {**ORDER, "id": str(uuid.uuid4())},
    ]
    statuses = [api.post("/orders", json=body).status_code for body in bodies]

    assert statuses == [422, 422, 422]
    assert _counts(pg_settings) == (0, 0)


def test_sql_injection_is_stored_literally_on_postgres(api: httpx.Client, pg_settings: Settings) -> None:
    customer = "x'); DELETE FROM orders; --"
    created = api.post("/orders", json={**ORDER, "customer_id": customer})

    assert created.status_code == 201
    engine = create_engine(pg_settings.orders_database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT customer_id FROM orders")).scalars().all()
    finally:
        engine.dispose()
    assert stored == [customer]


@pytest.fixture
def limited_url(pg_settings: Settings) -> Iterator[str]:
    settings = pg_settings.model_copy(update={"api_keys": API_KEY, "rate_limit": "2 per minute"})
    yield from _serve(create_app(settings))


def test_the_rate_limit_is_shared_through_redis(pg_settings: Settings, limited_url: str) -> None:
    assert pg_settings.rate_limit_storage.startswith("redis://")
    second_app = create_app(
        pg_settings.model_copy(update={"api_keys": API_KEY, "rate_limit": "2 per minute"})
    )
    with httpx.Client(base_url=limited_url, headers=AUTH, timeout=30) as worker_one:
        assert worker_one.get("/orders").status_code == 200
    assert second_app.test_client().get("/orders", headers=AUTH).status_code == 200  # another worker
    with httpx.Client(base_url=limited_url, headers=AUTH, timeout=30) as worker_one:
        refused = worker_one.get("/orders")

    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    with second_app.app_context():
        db.engine.dispose()
