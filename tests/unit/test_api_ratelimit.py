"""Rate limits: per API key, and per address and per key for requests without a valid key (key guessing).

Both answer 429 problem+json with Retry-After; other keys, other addresses and health are unaffected,
and a valid key is judged by its own limit only, whatever its address did.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event
from werkzeug.test import TestResponse

import order_service.auth as auth
from order_service import create_app
from order_service.auth import client_id, digest
from order_service.extensions import db
from order_service.models import ApiKey
from shared.config import Settings
from tests.unit.conftest import AUTH, app_on_sqlite

KEYS = ("osk_rate-limited-one", "osk_rate-limited-two")
ORDER = {
    "customer_id": "cus_1",
    "currency": "EUR",
    "lines": [{"sku": "A-1", "quantity": 1, "unit_amount": 5}],
}


@pytest.fixture
def limited_app(sqlite_settings: Settings) -> Iterator[Flask]:
    settings = sqlite_settings.model_copy(update={"api_keys": ",".join(KEYS), "rate_limit": "3 per minute"})
    app = create_app(settings)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


def _get(app: Flask, key: str, path: str = "/orders") -> int:
    return app.test_client().get(path, headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_key_over_its_limit_gets_429_with_retry_after(limited_app: Flask) -> None:
    assert [_get(limited_app, KEYS[0]) for _ in range(3)] == [200, 200, 200]

    response = limited_app.test_client().get("/orders", headers={"Authorization": f"Bearer {KEYS[0]}"})

    assert response.status_code == 429
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 61


def test_the_limit_is_counted_per_key(limited_app: Flask) -> None:
    for _ in range(4):
        _get(limited_app, KEYS[0])

    assert _get(limited_app, KEYS[1]) == 200


def test_health_and_refused_keys_do_not_count(limited_app: Flask) -> None:
    for _ in range(5):
        assert _get(limited_app, KEYS[0], "/healthz") == 200
        assert _get(limited_app, "osk_unknown") == 401

    assert _get(limited_app, KEYS[0]) == 200


def test_the_limiter_stores_counters_in_redis_when_the_broker_is_redis() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0")
    assert settings.rate_limit_storage == "redis://127.0.0.1:6379/0"
    assert Settings().rate_limit_storage == "memory://"


GUESSES = 20
FAILURE_LIMIT = 5


@pytest.fixture
def guarded_app(sqlite_settings: Settings) -> Iterator[Flask]:
    """A generous per-key limit and a low limit of requests without a valid key per address."""
    settings = sqlite_settings.model_copy(
        update={
            "api_keys": KEYS[0],
            "rate_limit": "1000 per minute",
            "auth_failure_rate_limit": f"{FAILURE_LIMIT} per minute",
        }
    )
    app = create_app(settings)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def key_lookups(guarded_app: Flask) -> Iterator[list[str]]:
    """Every statement that reads the api_keys table (a stored-key lookup)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            seen.append(statement)

    with guarded_app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _from(app: Flask, address: str, key: str | None) -> TestResponse:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return app.test_client().get("/orders", headers=headers, environ_base={"REMOTE_ADDR": address})


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stored keys' snapshot does not expire mid-test on a slow machine (``auth`` reads monotonic)."""
    monkeypatch.setattr(auth.time, "monotonic", lambda: 1000.0)


def _guess_until_throttled(app: Flask, address: str) -> None:
    statuses = [_from(app, address, f"osk_guess-{n:04d}").status_code for n in range(FAILURE_LIMIT + 1)]
    assert statuses == [401] * FAILURE_LIMIT + [429]


def test_wrong_keys_are_throttled_per_address_and_throttled_guesses_never_reach_the_database(
    guarded_app: Flask, key_lookups: list[str], frozen_clock: None
) -> None:
    responses = [_from(guarded_app, "203.0.113.7", f"osk_guess-{n:04d}") for n in range(FAILURE_LIMIT)]
    assert [r.status_code for r in responses] == [401] * FAILURE_LIMIT
    looked_up = len(key_lookups)  # the stored keys' snapshot, then one lookup per unknown key

    throttled = [_from(guarded_app, "203.0.113.7", f"osk_guess-{n:04d}") for n in range(GUESSES)]

    assert [r.status_code for r in throttled] == [429] * GUESSES
    assert len(key_lookups) == looked_up
    assert throttled[-1].mimetype == "application/problem+json"
    assert 1 <= int(throttled[-1].headers["Retry-After"]) <= 61
    assert "address" in throttled[-1].get_json()["detail"]


def test_requests_without_any_key_are_throttled_too(guarded_app: Flask) -> None:
    statuses = [_from(guarded_app, "203.0.113.8", None).status_code for _ in range(FAILURE_LIMIT + 2)]

    assert statuses == [401] * FAILURE_LIMIT + [429, 429]


def test_a_valid_key_passes_from_an_address_over_its_failure_budget(guarded_app: Flask) -> None:
    """Behind a NAT or a proxy, one guessing client must not turn away the others' valid keys."""
    _guess_until_throttled(guarded_app, "203.0.113.9")

    assert _from(guarded_app, "203.0.113.9", KEYS[0]).status_code == 200
    assert _from(guarded_app, "203.0.113.9", "osk_guess-again").status_code == 429
    assert _from(guarded_app, "203.0.113.9", None).status_code == 429
    assert _from(guarded_app, "198.51.100.1", "osk_guess-x").status_code == 401


def test_a_stored_key_passes_from_a_throttled_address_without_a_lookup_per_guess(
    guarded_app: Flask, key_lookups: list[str], frozen_clock: None
) -> None:
    stored = "osk_stored-key-behind-the-same-nat-0123456789"
    with guarded_app.app_context():
        db.session.add(ApiKey(name="behind-nat", key_hash=digest(stored)))
        db.session.commit()
    _guess_until_throttled(guarded_app, "203.0.113.11")
    looked_up = len(key_lookups)

    assert [_from(guarded_app, "203.0.113.11", stored).status_code for _ in range(3)] == [200] * 3
    assert _from(guarded_app, "203.0.113.11", "osk_guess-y").status_code == 429
    assert len(key_lookups) == looked_up


def test_one_wrong_key_retried_from_many_addresses_is_throttled(guarded_app: Flask) -> None:
    """A revoked key still configured in some client fleet is refused without a lookup per request."""
    statuses = [
        _from(guarded_app, f"192.0.2.{n}", "osk_revoked-long-ago").status_code
        for n in range(FAILURE_LIMIT + 2)
    ]

    assert statuses == [401] * FAILURE_LIMIT + [429, 429]
    assert _from(guarded_app, "192.0.2.200", "osk_another-guess").status_code == 401


def test_the_shipped_failure_limit_never_turns_away_a_valid_key(api_settings: Settings) -> None:
    """The issue: 120 wrong keys from one address, then 10 orders with a valid key from it (were 429)."""
    for app in app_on_sqlite(api_settings):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = "203.0.113.50"
        wrong = [client.get("/orders", headers={"Authorization": f"Bearer osk_x{n}"}) for n in range(120)]
        orders = [client.post("/orders", json=ORDER, headers=AUTH) for _ in range(10)]

        assert {r.status_code for r in wrong[60:]} == {429}  # AUTH_FAILURE_RATE_LIMIT: 60 per minute
        assert [r.status_code for r in orders] == [201] * 10


def test_the_pipeline_page_sign_in_is_throttled_by_the_same_count(guarded_app: Flask) -> None:
    for n in range(FAILURE_LIMIT):
        assert _from(guarded_app, "203.0.113.10", f"osk_guess-{n}").status_code == 401
    client = guarded_app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.10"

    response = client.post("/dashboard/login", data={"key": "osk_guess-on-the-page", "csrf": _csrf(client)})
    signed_in = client.post("/dashboard/login", data={"key": KEYS[0], "csrf": _csrf(client)})

    assert response.status_code == 429
    assert signed_in.status_code == 302  # a valid key signs in from the throttled address


def _csrf(client: FlaskClient) -> str:
    form = client.get("/dashboard/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    return csrf.group(1)


def test_a_valid_key_costs_no_read_of_the_failure_counts(
    guarded_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are checked first: the failed-auth storage is read only for requests without a valid key."""
    with guarded_app.app_context():
        limiter = auth._FAILURES.get()._limiter
    reads: list[str] = []
    test = limiter.test

    def counted(*args: Any) -> bool:
        reads.append(args[-1])
        return test(*args)

    monkeypatch.setattr(limiter, "test", counted)

    assert [_from(guarded_app, "192.0.2.1", KEYS[0]).status_code for _ in range(10)] == [200] * 10
    assert reads == []
    assert _from(guarded_app, "192.0.2.1", "osk_guess").status_code == 401
    assert reads == ["address:192.0.2.1", f"key:{client_id(digest('osk_guess'))}"]
