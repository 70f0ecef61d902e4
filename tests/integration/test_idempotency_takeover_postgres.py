"""A stored Idempotency-Key response is final: no takeover, release or retry may delete or replace it.

Each test drives two API instances (two apps, two engines, as two gunicorn workers) on real
Postgres and pins one interleaving with hooks and events, never with sleeps:

- the original request ``A`` pauses right before its order's INSERT, or at its session's
  ``before_commit``, when its stored-response UPDATE already holds the key's row lock;
- the retry ``B`` pauses on its engine right before its takeover UPDATE, after it has read the
  key's row as stale and unanswered.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from harness.waiting import wait_until
from order_service import create_app
from order_service.extensions import db
from order_service.models import Order
from shared.config import Settings
from tests.support.locks import waiting_on_a_lock

pytestmark = pytest.mark.integration

API_KEY = "osk_takeover-" + uuid.uuid4().hex
TAKEOVER = "UPDATE idempotency_keys SET lock_token%"
"""The statement a takeover waits in while another request holds the key's row."""
ORDER = {
    "customer_id": "cus_takeover",
    "currency": "EUR",
    "lines": [{"sku": "LAMP-3", "quantity": 1, "unit_amount": 4200}],
}
STEP = 20.0  # seconds any one step may take before the test fails instead of hanging


class Gate:
    """One pause point: the paused thread reports ``reached`` and waits for ``release``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._reached = threading.Event()
        self._go = threading.Event()

    def pause(self) -> None:
        self._reached.set()
        if not self._go.wait(STEP):
            raise TimeoutError(f"{self.name}: never released")

    def wait_reached(self, request: Future[TestResponse]) -> None:
        """Wait for the request to pause here; fail at once, with its answer, if it ends instead."""
        deadline = time.monotonic() + STEP
        while not self._reached.wait(0.01):
            if request.done():
                answer = request.result()
                raise AssertionError(f"{self.name}: the request ended first: {answer.status} {answer.text}")
            assert time.monotonic() < deadline, f"{self.name}: never reached"

    def release(self) -> None:
        self._go.set()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


@pytest.fixture
def gate(pool: ThreadPoolExecutor) -> Iterator[Callable[[str], Gate]]:
    """Makes gates; all are opened at teardown (before the pool joins), so a failed test never hangs."""
    made: list[Gate] = []

    def make(name: str) -> Gate:
        made.append(Gate(name))
        return made[-1]

    yield make
    for each in made:
        each.release()


@pytest.fixture
def api_settings(pg_settings: Settings) -> Settings:
    return pg_settings.model_copy(update={"api_keys": API_KEY, "rate_limit": "100000 per minute"})


def _app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app_a(api_settings: Settings) -> Iterator[Flask]:
    """The API instance serving the original request."""
    yield from _app(api_settings)


@pytest.fixture
def app_b(api_settings: Settings) -> Iterator[Flask]:
    """Another API instance, serving the retries."""
    yield from _app(api_settings)


@pytest.fixture
def probe(api_settings: Settings) -> Iterator[Engine]:
    """The test's own connection to the orders database, to inspect and to age claims."""
    engine = create_engine(api_settings.orders_database_url)
    yield engine
    engine.dispose()


def _post(app: Flask, key: str) -> TestResponse:
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": key}
    return app.test_client().post("/orders", json=ORDER, headers=headers)


def _engine(app: Flask) -> Engine:
    with app.app_context():
        return db.engine


def _on_session(app: Flask, name: str, hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` at session event ``name`` in sessions of ``app``; returns the remover."""
    engine = _engine(app)

    def listener(session: Session, *_: Any) -> None:
        if session.get_bind() is engine:
            hook()

    event.listen(Session, name, listener)
    return lambda: event.remove(Session, name, listener)


def _before_order_insert(app: Flask, hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` right before ``app`` writes an order (after its claim committed)."""
    engine = _engine(app)

    def listener(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "INSERT INTO orders " in statement:  # alone, or with its lines in one statement (Postgres)
            hook()

    event.listen(engine, "before_cursor_execute", listener)
    return lambda: event.remove(engine, "before_cursor_execute", listener)


def _before_takeover(app: Flask, gate: Gate) -> Callable[[], None]:
    """Pause ``app``'s takeover UPDATE (it has read the row as stale and unanswered) at ``gate``."""
    engine = _engine(app)

    def listener(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        assignments = statement.split("WHERE", 1)[0]
        if statement.startswith("UPDATE idempotency_keys") and "lock_token=" in assignments:
            gate.pause()

    event.listen(engine, "before_cursor_execute", listener)
    return lambda: event.remove(engine, "before_cursor_execute", listener)


def _age_claims(probe: Engine) -> None:
    """Make every claim older than idempotency.LOCK_SECONDS, as if its request had stalled."""
    with probe.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET locked_at = locked_at - interval '1 hour'"))


def _orders(probe: Engine) -> int:
    with probe.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Order.__table__)) or 0


def _keys(probe: Engine) -> list[tuple[int | None, str | None]]:
    with probe.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(text("SELECT response_status, response_body FROM idempotency_keys"))
        ]


def _assert_replayed(response: TestResponse, original: TestResponse) -> None:
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers.get("Idempotent-Replayed") == "true"
    assert response.get_json() == original.get_json()


def _settle(future: Future[TestResponse]) -> TestResponse:
    return future.result(timeout=STEP)


def test_a_takeover_that_reads_the_key_before_the_original_commits_replays_its_201(
    app_a: Flask, app_b: Flask, probe: Engine, pool: ThreadPoolExecutor, gate: Callable[[str], Gate]
) -> None:
    """A commits between B's read of the stale claim and B's takeover: B must replay, not delete."""
    key = f"takeover-{uuid.uuid4()}"
    a_claimed, b_read = gate("A claimed, before its order INSERT"), gate("B read the stale claim")
    removers = [_before_order_insert(app_a, a_claimed.pause), _before_takeover(app_b, b_read)]
    try:
        original = pool.submit(_post, app_a, key)
        a_claimed.wait_reached(original)
        _age_claims(probe)
        retry = pool.submit(_post, app_b, key)
        b_read.wait_reached(retry)
        a_claimed.release()
        first = _settle(original)
        assert first.status_code == 201
        b_read.release()
        second = _settle(retry)
    finally:
        for remove in removers:
            remove()

    third = _post(app_b, key)

    _assert_replayed(second, first)
    _assert_replayed(third, first)
    assert _orders(probe) == 1
    assert _keys(probe) == [(201, first.get_data(as_text=True))]


def test_a_takeover_blocked_by_the_original_transaction_waits_and_replays_its_201(
    app_a: Flask, app_b: Flask, probe: Engine, pool: ThreadPoolExecutor, gate: Callable[[str], Gate]
) -> None:
    """B's takeover UPDATE meets the row lock of A's stored-response UPDATE: it waits, then replays."""
    key = f"takeover-{uuid.uuid4()}"
    a_claimed, a_flushed = gate("A claimed, before its order INSERT"), gate("A stored its 201, before commit")
    b_read = gate("B read the stale claim")
    removers = [
        _before_order_insert(app_a, a_claimed.pause),
        _on_session(app_a, "before_commit", a_flushed.pause),
        _before_takeover(app_b, b_read),
    ]
    try:
        original = pool.submit(_post, app_a, key)
        a_claimed.wait_reached(original)
        _age_claims(probe)
        retry = pool.submit(_post, app_b, key)
        b_read.wait_reached(retry)
        a_claimed.release()
        a_flushed.wait_reached(original)  # A's UPDATE now holds the key's row lock, uncommitted
        b_read.release()
        wait_until(
            lambda: waiting_on_a_lock(probe, TAKEOVER),
            timeout=STEP,
            interval=0.02,
            message="B blocked",
        )
        a_flushed.release()
        first = _settle(original)
        second = _settle(retry)
    finally:
        for remove in removers:
            remove()

    third = _post(app_b, key)

    assert first.status_code == 201
    _assert_replayed(second, first)
    _assert_replayed(third, first)
    assert _orders(probe) == 1


def test_a_takeover_blocked_by_an_original_that_rolls_back_places_the_one_order(
    app_a: Flask, app_b: Flask, probe: Engine, pool: ThreadPoolExecutor, gate: Callable[[str], Gate]
) -> None:
    """The fence must not stop a legitimate takeover: A fails after its flush, B places the order."""
    key = f"takeover-{uuid.uuid4()}"
    a_claimed, a_flushed = gate("A claimed, before its order INSERT"), gate("A stored its 201, before commit")
    b_read = gate("B read the stale claim")

    def fail_after_flush() -> None:
        a_flushed.pause()
        raise RuntimeError("the original request dies before its commit")

    removers = [
        _before_order_insert(app_a, a_claimed.pause),
        _on_session(app_a, "before_commit", fail_after_flush),
        _before_takeover(app_b, b_read),
    ]
    try:
        original = pool.submit(_post, app_a, key)
        a_claimed.wait_reached(original)
        _age_claims(probe)
        retry = pool.submit(_post, app_b, key)
        b_read.wait_reached(retry)
        a_claimed.release()
        a_flushed.wait_reached(original)
        b_read.release()
        wait_until(
            lambda: waiting_on_a_lock(probe, TAKEOVER),
            timeout=STEP,
            interval=0.02,
            message="B blocked",
        )
        a_flushed.release()
        first = _settle(original)
        second = _settle(retry)
    finally:
        for remove in removers:
            remove()

    third = _post(app_a, key)

    assert first.status_code == 500
    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers
    _assert_replayed(third, second)
    assert _orders(probe) == 1


def test_a_commit_whose_acknowledgement_is_lost_keeps_its_201_for_the_retry(
    app_a: Flask, app_b: Flask, probe: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMMIT reaches the server, the driver then raises: the API's release() must not delete the answer."""
    key = f"ack-lost-{uuid.uuid4()}"
    dialect = _engine(app_a).dialect
    real_commit = dialect.do_commit
    armed = threading.Event()

    def commit_then_lose_the_ack(dbapi_connection: Any) -> None:
        real_commit(dbapi_connection)
        if armed.is_set():
            armed.clear()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(dialect, "do_commit", commit_then_lose_the_ack)
    remove = _on_session(app_a, "before_commit", armed.set)  # only the order's commit, not the claim's
    try:
        lost = _post(app_a, key)
    finally:
        remove()
    assert lost.status_code == 503
    assert _orders(probe) == 1  # the COMMIT did happen

    retry = _post(app_b, key)

    assert retry.status_code == 201
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert _orders(probe) == 1
    ((status, body),) = _keys(probe)
    assert status == 201
    assert retry.get_json() == json.loads(body or "")


def _idle_in_transaction(probe: Engine) -> int:
    """Sessions of the test's database that sit inside a transaction, waiting for their client."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state = 'idle in transaction'"
    )
    with probe.connect() as conn:
        return int(conn.scalar(query) or 0)


def test_an_original_hung_holding_the_key_does_not_lock_its_client_out(
    app_a: Flask,
    app_b: Flask,
    probe: Engine,
    pool: ThreadPoolExecutor,
    gate: Callable[[str], Gate],
    api_settings: Settings,
) -> None:
    """A hangs for good after storing its 201, the key's row locked by its uncommitted UPDATE.

    The database ends a request's transaction idle longer than ``API_TIMEOUT_SECONDS``, so the client's
    retry after the claim's lock time takes the key over and places the one order; without that bound
    every retry waited on A's row lock until its statement timeout, a 503 for as long as A hung.
    """
    key = f"hung-{uuid.uuid4()}"
    a_hung = gate("A stored its 201, then hangs before commit")
    remove = _on_session(app_a, "before_commit", a_hung.pause)
    try:
        original = pool.submit(_post, app_a, key)
        a_hung.wait_reached(original)
        assert _idle_in_transaction(probe) == 1
        wait_until(
            lambda: _idle_in_transaction(probe) == 0,
            timeout=api_settings.api_timeout_seconds + 5,
            message="the database to end A's transaction, idle past API_TIMEOUT_SECONDS",
        )
        _age_claims(probe)

        retry = _post(app_b, key)

        a_hung.release()
        first = _settle(original)
    finally:
        remove()

    assert retry.status_code == 201, retry.get_data(as_text=True)
    assert "Idempotent-Replayed" not in retry.headers
    assert first.status_code == 503  # A's commit meets its ended session: never a second 201
    assert _orders(probe) == 1
    assert _keys(probe) == [(201, retry.get_data(as_text=True))]
