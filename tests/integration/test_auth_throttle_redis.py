"""Key guessing is counted in Redis, so every API process (gunicorn worker) shares one count per address
(and one per presented key)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from flask import Flask

from order_service import create_app
from order_service.extensions import db
from shared.config import Settings

API_KEY = "osk_throttle-" + uuid.uuid4().hex
LIMIT = 4


@pytest.fixture
def workers(pg_settings: Settings) -> Iterator[list[Flask]]:
    """Two apps on the same Redis and database, as two gunicorn workers are."""
    settings = pg_settings.model_copy(
        update={"api_keys": API_KEY, "auth_failure_rate_limit": f"{LIMIT} per minute"}
    )
    apps = [create_app(settings), create_app(settings)]
    yield apps
    for app in apps:
        with app.app_context():
            db.engine.dispose()


def _guess(app: Flask, n: int) -> int:
    client = app.test_client()
    headers = {"Authorization": f"Bearer osk_guess-{n}"}
    return client.get("/orders", headers=headers, environ_base={"REMOTE_ADDR": "192.0.2.44"}).status_code


def test_guesses_spread_over_workers_share_one_count_in_redis(
    workers: list[Flask], redis_client: redis.Redis, queue_prefix: str
) -> None:
    statuses = [_guess(workers[n % 2], n) for n in range(LIMIT + 4)]

    assert statuses == [401] * LIMIT + [429] * 4
    counters = list(redis_client.scan_iter(match=f"*{queue_prefix}orders-api-auth-failures*address:*"))
    assert len(counters) == 1
    assert int(redis_client.get(counters[0]) or 0) == LIMIT
