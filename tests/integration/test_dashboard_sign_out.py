"""A pipeline-page sign-out is recorded in the orders database: every API process refuses the old cookie."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select

from order_service import create_app
from order_service.extensions import db
from order_service.models import SignedOutSession
from shared.config import Settings
from tests.unit.test_dashboard import csrf_of, sign_in

API_KEY = "osk_sign-out-" + uuid.uuid4().hex
COOKIE = "orders_dashboard"


@pytest.fixture(params=["redis", "amqp"])
def workers(pg_settings: Settings, request: pytest.FixtureRequest) -> Iterator[list[Flask]]:
    """Two apps on the same database and SECRET_KEY, as two API processes are."""
    brokers = {"redis": pg_settings.broker_url, "amqp": "amqp://guest:guest@127.0.0.1:5672//"}
    secret = uuid.uuid4().hex * 2
    update = {"api_keys": API_KEY, "secret_key": secret, "broker_url": brokers[request.param]}
    settings = pg_settings.model_copy(update=update)
    apps = [create_app(settings), create_app(settings)]
    yield apps
    for app in apps:
        with app.app_context():
            db.engine.dispose()


def _data_with(app: Flask, cookie: str) -> int:
    client = app.test_client()
    client.set_cookie(COOKIE, cookie, path="/dashboard")
    return client.get("/dashboard/data").status_code


def test_a_sign_out_on_one_process_ends_the_session_on_the_others(workers: list[Flask]) -> None:
    """Whatever the broker: sign-outs are not kept in it (nor per process), but in the orders database."""
    browser = workers[0].test_client()
    assert sign_in(browser, API_KEY).status_code == 302
    cookie = browser.get_cookie(COOKIE, path="/dashboard")
    assert cookie is not None
    assert _data_with(workers[1], cookie.value) == 200

    browser.post("/dashboard/logout", data={"csrf": csrf_of(browser, "/dashboard")})

    assert _data_with(workers[1], cookie.value) == 401
    with workers[1].app_context():
        assert db.session.scalar(select(func.count()).select_from(SignedOutSession)) == 1
