"""Rate limits: per API key, and per client address for requests without a valid key (key guessing).

Both answer 429 problem+json with Retry-After; other keys, other addresses and health are unaffected.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event
from werkzeug.test import TestResponse

from order_service import create_app
from order_service.extensions import db
from shared.config import Settings

KEYS = ("osk_rate-limited-one", "osk_rate-limited-two")


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


def test_wrong_keys_are_throttled_per_address_before_the_key_lookup(
    guarded_app: Flask, key_lookups: list[str]
) -> None:
    responses = [_from(guarded_app, "203.0.113.7", f"osk_guess-{n:04d}") for n in range(GUESSES)]

    statuses = [r.status_code for r in responses]
    assert statuses == [401] * FAILURE_LIMIT + [429] * (GUESSES - FAILURE_LIMIT)
    assert len(key_lookups) == FAILURE_LIMIT  # the throttled guesses never reached the database
    throttled = responses[-1]
    assert throttled.mimetype == "application/problem+json"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 61
    assert "address" in throttled.get_json()["detail"]


def test_requests_without_any_key_are_throttled_too(guarded_app: Flask) -> None:
    statuses = [_from(guarded_app, "203.0.113.8", None).status_code for _ in range(FAILURE_LIMIT + 2)]

    assert statuses == [401] * FAILURE_LIMIT + [429, 429]


def test_a_throttled_address_leaves_other_addresses_and_valid_keys_alone(guarded_app: Flask) -> None:
    for n in range(FAILURE_LIMIT + 1):
        _from(guarded_app, "203.0.113.9", f"osk_guess-{n}")

    assert _from(guarded_app, "203.0.113.9", KEYS[0]).status_code == 429  # refused before any lookup
    assert _from(guarded_app, "198.51.100.1", "osk_guess-x").status_code == 401
    assert [_from(guarded_app, "198.51.100.2", KEYS[0]).status_code for _ in range(GUESSES)] == [
        200
    ] * GUESSES


def test_the_pipeline_page_sign_in_is_throttled_by_the_same_count(guarded_app: Flask) -> None:
    for n in range(FAILURE_LIMIT):
        assert _from(guarded_app, "203.0.113.10", f"osk_guess-{n}").status_code == 401
    client = guarded_app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.10"
    form = client.get("/dashboard/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None

    response = client.post("/dashboard/login", data={"key": "osk_guess-on-the-page", "csrf": csrf.group(1)})

    assert response.status_code == 429


def test_an_address_under_its_limit_is_checked_once_a_second_and_a_failure_is_seen_at_once(
    guarded_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed-auth check costs a storage read per address per second, not per request; a failure
    counted by this process ends that at once (the budget is still exact within one process)."""
    from order_service.auth import _FAILURES

    with guarded_app.app_context():
        limiter = _FAILURES.get()._limiter
    reads: list[str] = []
    test = limiter.test

    def counted(*args: Any) -> bool:
        reads.append(args[-1])
        return test(*args)

    monkeypatch.setattr(limiter, "test", counted)

    assert [_from(guarded_app, "192.0.2.1", KEYS[0]).status_code for _ in range(10)] == [200] * 10
    assert reads == ["192.0.2.1"]
    statuses = [
        _from(guarded_app, "192.0.2.1", f"osk_guess-{n}").status_code for n in range(FAILURE_LIMIT + 1)
    ]
    assert statuses == [401] * FAILURE_LIMIT + [429]
    # The first guess rides on the remembered check; after each failure the next request reads again.
    assert len(reads) == 1 + FAILURE_LIMIT
