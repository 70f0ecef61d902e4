"""Stored API keys found valid are trusted for a few seconds per process: no lookup per request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask_outbox.db import utcnow
from sqlalchemy import event, update

import order_service.auth as auth
from order_service.auth import STORED_KEY_CACHE_SECONDS, digest
from order_service.extensions import db
from order_service.models import ApiKey

STORED = "osk_stored-key-for-the-cache-test-0123456789"


@pytest.fixture
def lookups(app: Flask) -> Iterator[list[str]]:
    """Statements that read ``api_keys``, as the app sends them."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "api_keys" in statement:
            seen.append(statement)

    with app.app_context():
        db.session.add(ApiKey(name="cached", key_hash=digest(STORED)))
        db.session.commit()
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _get(app: Flask) -> int:
    return app.test_client().get("/orders", headers={"Authorization": f"Bearer {STORED}"}).status_code


def test_a_stored_key_is_looked_up_once_then_trusted_until_its_time_is_up(
    app: Flask, lookups: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])

    assert [_get(app) for _ in range(5)] == [200] * 5
    assert len(lookups) == 1

    now[0] += STORED_KEY_CACHE_SECONDS + 0.1
    assert _get(app) == 200
    assert len(lookups) == 2


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_time_is_up(
    app: Flask, lookups: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    assert _get(app) == 200
    with app.app_context():  # another process (the CLI on another host) revokes it
        db.session.execute(update(ApiKey).values(revoked_at=utcnow()))
        db.session.commit()

    assert _get(app) == 200  # still trusted here, for at most STORED_KEY_CACHE_SECONDS
    now[0] += STORED_KEY_CACHE_SECONDS + 0.1
    assert _get(app) == 401
