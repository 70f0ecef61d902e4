"""Idempotency-Key: a retry returns the first order, never a second one; misuse is refused."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_outbox.db import utcnow
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from order_service import idempotency
from order_service.auth import client_id, digest
from order_service.extensions import SETTINGS, db
from order_service.models import IdempotencyKey
from order_service.services import LineRequest, PlaceOrder, place_order
from order_service.signals import Veto, order_placed
from shared.config import Settings
from tests.unit.conftest import API_KEY

ORDER = {
    "customer_id": "cus_7",
    "currency": "EUR",
    "lines": [{"sku": "MUG-2", "quantity": 3, "unit_amount": 800}],
}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"test-{uuid.uuid4()}"}


def test_a_retry_with_the_same_key_and_body_returns_the_first_order(
    client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = _key()
    first = client.post("/orders", json=ORDER, headers=headers)
    again = client.post("/orders", json=dict(reversed(ORDER.items())), headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert row_counts() == {"orders": 1, "order_lines": 1, "outbox": 1, "idempotency_keys": 1}


def test_the_same_key_with_another_body_is_refused(
    client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = _key()
    client.post("/orders", json=ORDER, headers=headers)

    response = client.post("/orders", json={**ORDER, "customer_id": "cus_8"}, headers=headers)

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"].endswith("/idempotency-key-reused")
    assert row_counts()["orders"] == 1


def test_keys_belong_to_one_api_key(app: Flask, api_settings: Settings) -> None:
    other = "osk_second-client-key-abcdefabcdef"
    two_clients = app.extensions["order_service.keys"].__class__(digests=(digest(API_KEY), digest(other)))
    app.extensions["order_service.keys"] = two_clients
    headers = _key()
    mine = app.test_client().post(
        "/orders", json=ORDER, headers={**headers, "Authorization": f"Bearer {API_KEY}"}
    )
    theirs = app.test_client().post(
        "/orders", json=ORDER, headers={**headers, "Authorization": f"Bearer {other}"}
    )

    assert mine.status_code == theirs.status_code == 201
    assert mine.get_json()["id"] != theirs.get_json()["id"]


def _claim_in_flight(app: Flask, key: str, body: dict[str, Any]) -> idempotency.Claim:
    settings = SETTINGS.get(app)
    fingerprint = idempotency.request_hash("POST", "/orders", body)
    with app.app_context():
        owned = idempotency.claim(db.engine, settings, client_id(digest(API_KEY)), key, fingerprint)
    assert isinstance(owned, idempotency.Claim)
    return owned


def test_a_retry_while_the_first_is_in_flight_gets_409(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = _key()
    _claim_in_flight(app, headers["Idempotency-Key"], ORDER)

    response = client.post("/orders", json=ORDER, headers=headers)

    assert response.status_code == 409
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["type"].endswith("/idempotency-key-in-flight")
    assert row_counts()["orders"] == 0


def test_a_claim_abandoned_by_a_crash_is_taken_over_after_the_lock_time(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = _key()
    abandoned = _claim_in_flight(app, headers["Idempotency-Key"], ORDER)
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(update(IdempotencyKey.__table__).values(locked_at=utcnow() - timedelta(minutes=5)))

    response = client.post("/orders", json=ORDER, headers=headers)

    assert response.status_code == 201
    late_original = PlaceOrder("cus_7", "EUR", (LineRequest("MUG-2", 3, 800),))
    with (
        app.app_context(),
        pytest.raises(idempotency.KeyInFlight),
        idempotency.recorded_with_order(db.session(), abandoned, lambda order: "{}"),
    ):
        place_order(db.session(), late_original)
    assert row_counts()["orders"] == 1


def test_an_expired_key_starts_afresh_and_expired_keys_are_pruned(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = _key()
    first = client.post("/orders", json=ORDER, headers=headers).get_json()
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(update(IdempotencyKey.__table__).values(expires_at=utcnow() - timedelta(seconds=1)))

    second = client.post("/orders", json={**ORDER, "customer_id": "cus_9"}, headers=headers)

    assert second.status_code == 201
    assert second.get_json()["id"] != first["id"]
    with app.app_context():
        assert idempotency.prune(db.engine, batch=100, now=utcnow() + timedelta(days=2)) == 1
    assert row_counts()["idempotency_keys"] == 0


def test_keys_expire_after_the_configured_time(app: Flask, client: FlaskClient) -> None:
    client.post("/orders", json=ORDER, headers=_key())
    ttl = idempotency.KEY_TTL_SECONDS

    with app.app_context():
        assert idempotency.prune(db.engine, batch=100, now=utcnow() + timedelta(seconds=ttl - 60)) == 0
        assert idempotency.prune(db.engine, batch=100, now=utcnow() + timedelta(seconds=ttl + 1)) == 1


def test_a_refused_order_releases_its_key_for_a_retry(
    client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = _key()

    def refuse(sender: Any, **_: Any) -> Veto:
        return Veto("customer is blocked")

    order_placed.connect(refuse)
    try:
        refused = client.post("/orders", json=ORDER, headers=headers)
    finally:
        order_placed.disconnect(refuse)
    assert refused.status_code == 422
    assert row_counts() == {"orders": 0, "order_lines": 0, "outbox": 0, "idempotency_keys": 0}

    assert client.post("/orders", json=ORDER, headers=headers).status_code == 201


def _expire_all(app: Flask) -> None:
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(update(IdempotencyKey.__table__).values(expires_at=utcnow() - timedelta(seconds=1)))


@contextmanager
def _deletes(app: Flask) -> Iterator[list[str]]:
    """Every DELETE on idempotency_keys the app's engine runs while the context is open."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and "idempotency_keys" in statement:
            seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_the_prune_command_deletes_every_expired_key_in_bounded_batches(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    for _ in range(5):
        client.post("/orders", json=ORDER, headers=_key())
    _expire_all(app)
    client.post("/orders", json=ORDER, headers=_key())  # not expired: stays

    with _deletes(app) as deletes:
        result = app.test_cli_runner().invoke(args=["idempotency-keys", "prune", "--batch", "2"])

    assert result.exit_code == 0, result.output
    assert "pruned 5 expired idempotency keys in 3 batches" in result.output
    assert len(deletes) == 3
    assert all("LIMIT" in statement.upper() for statement in deletes)
    assert row_counts()["idempotency_keys"] == 1


def test_requests_prune_one_bounded_batch_after_the_response_is_sent(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    for _ in range(3):
        client.post("/orders", json=ORDER, headers=_key())
    _expire_all(app)
    pruner = app.extensions["order_service.idempotency_pruner"]
    pruner.batch, pruner.last = 2, time.monotonic() - pruner.interval

    with _deletes(app) as deletes:
        response = client.post("/orders", json=ORDER, headers=_key())
        assert response.status_code == 201
        assert (deletes, row_counts()["idempotency_keys"]) == ([], 4)  # nothing on the request's path

        response.close()  # the WSGI server closes the response once it is sent

    assert len(deletes) == 1
    assert "LIMIT" in deletes[0].upper()
    assert row_counts()["idempotency_keys"] == 2  # a batch of 2 of the 3 expired; the next request does more


def test_pruning_keeps_up_with_the_insert_rate_a_full_batch_makes_the_next_keyed_request_prune_again(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    """A backlog of 50 expired keys, batches of 10: each keyed request adds one key and removes ten."""
    for _ in range(50):
        client.post("/orders", json=ORDER, headers=_key())
    _expire_all(app)
    pruner = app.extensions["order_service.idempotency_pruner"]
    pruner.batch, pruner.last = 10, time.monotonic() - pruner.interval

    with _deletes(app) as deletes:
        for _ in range(6):
            client.post("/orders", json=ORDER, headers=_key()).close()

    assert row_counts()["idempotency_keys"] == 6  # the backlog gone within the interval; the new keys stay
    assert len(deletes) == 6  # five full batches and the one that found none left
    with _deletes(app) as deletes:
        client.post("/orders", json=ORDER, headers=_key()).close()
    assert deletes == []  # caught up: back to one prune per interval


def test_a_commit_whose_acknowledgement_is_lost_is_replayed_not_placed_again(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order's COMMIT lands, then the driver raises: release() must keep the stored 201."""
    with app.app_context():
        dialect = db.engine.dialect
    real_commit = dialect.do_commit
    armed: list[bool] = []

    def commit_then_lose_the_ack(dbapi_connection: Any) -> None:
        real_commit(dbapi_connection)
        if armed:
            armed.clear()
            raise sqlite3.OperationalError("disk I/O error")

    def arm(*_: Any) -> None:
        armed.append(True)

    monkeypatch.setattr(dialect, "do_commit", commit_then_lose_the_ack)
    headers = _key()
    event.listen(Session, "before_commit", arm)  # the order's commit only: claims use Core
    try:
        lost = client.post("/orders", json=ORDER, headers=headers)
    finally:
        event.remove(Session, "before_commit", arm)
    assert lost.status_code == 503
    assert row_counts()["orders"] == 1

    retry = client.post("/orders", json=ORDER, headers=headers)

    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert row_counts() == {"orders": 1, "order_lines": 1, "outbox": 1, "idempotency_keys": 1}


def test_release_keeps_a_claim_that_holds_a_response(
    app: Flask, client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = _key()
    owned = _claim_in_flight(app, headers["Idempotency-Key"], ORDER)
    with app.app_context(), idempotency.recorded_with_order(db.session(), owned, lambda order: "{}"):
        place_order(db.session(), PlaceOrder("cus_7", "EUR", (LineRequest("MUG-2", 3, 800),)))

    with app.app_context():
        idempotency.release(db.engine, owned)

    assert row_counts()["idempotency_keys"] == 1
