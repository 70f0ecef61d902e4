"""Rate limit per API key: 429 problem+json with Retry-After; other keys and health are unaffected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

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
    assert Settings(rate_limit_storage_url="memory://").rate_limit_storage == "memory://"
