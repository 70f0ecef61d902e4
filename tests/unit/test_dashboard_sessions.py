"""The pipeline page's session: sign-out ends it on the server, the cookie's flags, its signing key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_outbox.db import utcnow

from order_service.auth import digest
from order_service.extensions import db
from order_service.models import ApiKey
from shared.config import Settings
from tests.unit.conftest import app_on_sqlite
from tests.unit.test_dashboard import csrf_of, sign_in

COOKIE = "orders_dashboard"


def _captured(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE, path="/dashboard")
    assert cookie is not None
    return cookie.value


def _replayed(app: Flask, value: str) -> FlaskClient:
    thief = app.test_client()
    thief.set_cookie(COOKIE, value, path="/dashboard")
    return thief


def test_a_cookie_captured_before_sign_out_is_refused_after_it(app: Flask) -> None:
    browser = app.test_client()
    assert sign_in(browser).status_code == 302
    captured = _captured(browser)
    assert _replayed(app, captured).get("/dashboard/data").status_code == 200  # the same session, so far

    assert browser.post("/dashboard/logout", data={"csrf": csrf_of(browser, "/dashboard")}).status_code == 302

    assert _replayed(app, captured).get("/dashboard/data").status_code == 401
    assert _replayed(app, captured).get("/dashboard").status_code == 302  # back to the login form
    assert sign_in(browser).status_code == 302  # signing in again opens a new session
    assert browser.get("/dashboard/data").status_code == 200


def test_signing_out_ends_only_that_session(app: Flask) -> None:
    laptop, phone = app.test_client(), app.test_client()
    sign_in(laptop)
    sign_in(phone)

    laptop.post("/dashboard/logout", data={"csrf": csrf_of(laptop, "/dashboard")})

    assert laptop.get("/dashboard/data").status_code == 401
    assert phone.get("/dashboard/data").status_code == 200


@pytest.mark.parametrize("secure", [False, True])
def test_the_session_cookie_is_secure_when_configured(api_settings: Settings, secure: bool) -> None:
    for app in app_on_sqlite(api_settings.model_copy(update={"session_cookie_secure": secure})):
        browser = app.test_client()
        sign_in(browser)
        cookie = browser.get_cookie(COOKIE, path="/dashboard")

        assert cookie is not None
        assert cookie.secure is secure


@pytest.fixture
def strict_app(api_settings: Settings) -> Iterator[Flask]:
    yield from app_on_sqlite(api_settings.model_copy(update={"auth_failure_rate_limit": "3 per minute"}))


def test_an_open_session_of_a_revoked_key_does_not_count_as_guessing(strict_app: Flask) -> None:
    """The page polls every 2 s: a revoked key's tab must not lock its address out of the API."""
    stored = "osk_stored-key-revoked-while-the-page-is-open"
    with strict_app.app_context():
        db.session.add(ApiKey(name="ops", key_hash=digest(stored)))
        db.session.commit()
    browser = strict_app.test_client()
    browser.environ_base["REMOTE_ADDR"] = "192.0.2.30"
    assert sign_in(browser, stored).status_code == 302
    with strict_app.app_context():
        db.session.query(ApiKey).update({ApiKey.revoked_at: utcnow()})
        db.session.commit()

    tabs = [_replayed(strict_app, _captured(browser)) for _ in range(5)]  # each polls with the old cookie

    polls = [
        tab.get("/dashboard/data", environ_base={"REMOTE_ADDR": "192.0.2.30"}).status_code for tab in tabs
    ]
    guess = browser.get("/orders", headers={"Authorization": "Bearer osk_guess"})

    assert polls == [401] * 5
    assert guess.status_code == 401  # not 429: the polls were not failures of this address
