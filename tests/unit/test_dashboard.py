"""The pipeline page: sign-in with an API key into a signed session, and its numbers from fixture rows."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_outbox.db import utcnow
from sqlalchemy import insert

from order_service import create_app
from order_service.auth import digest
from order_service.extensions import db
from order_service.models import INVOICED, PLACED, ApiKey, Order, outbox
from order_service.pipeline import percentile
from shared.config import Settings
from shared.contracts import ORDER_PLACED
from tests.unit.conftest import API_KEY


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    """A client with no Authorization header: only the session cookie can open the page."""
    return app.test_client()


def csrf_of(client: FlaskClient, path: str = "/dashboard/login") -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert match, "no CSRF token in the form"
    return match.group(1)


def sign_in(client: FlaskClient, key: str = API_KEY) -> Any:
    return client.post("/dashboard/login", data={"key": key, "csrf": csrf_of(client)})


def test_page_redirects_to_the_login_form_without_a_session(browser: FlaskClient) -> None:
    response = browser.get("/dashboard")

    assert response.status_code == 302
    assert response.headers["Location"].endswith("/dashboard/login")


def test_data_answers_401_without_a_session_even_with_a_bearer_key(browser: FlaskClient) -> None:
    assert browser.get("/dashboard/data").status_code == 401
    with_header = browser.get("/dashboard/data", headers={"Authorization": f"Bearer {API_KEY}"})
    assert with_header.status_code == 401  # the page's data is for a signed-in session only


def test_a_wrong_key_is_refused_and_opens_nothing(browser: FlaskClient) -> None:
    response = sign_in(browser, "osk_not-a-key")

    assert response.status_code == 401
    assert "not valid" in response.get_data(as_text=True)
    assert browser.get("/dashboard/data").status_code == 401


def test_a_login_without_its_form_token_is_refused(browser: FlaskClient) -> None:
    browser.get("/dashboard/login")

    response = browser.post("/dashboard/login", data={"key": API_KEY, "csrf": "forged"})

    assert response.status_code == 400
    assert browser.get("/dashboard/data").status_code == 401


def test_a_key_signs_in_keeps_only_its_digest_and_signs_out(browser: FlaskClient) -> None:
    response = sign_in(browser)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/dashboard")
    cookie = browser.get_cookie("orders_dashboard", path="/dashboard")
    assert cookie is not None
    assert cookie.http_only
    assert cookie.same_site == "Strict"
    assert API_KEY not in cookie.value  # the signed cookie holds the digest, never the key

    page = browser.get("/dashboard")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert browser.get("/dashboard/data").status_code == 200

    assert browser.post("/dashboard/logout", data={"csrf": csrf_of(browser, "/dashboard")}).status_code == 302
    assert browser.get("/dashboard/data").status_code == 401


def test_a_revoked_stored_key_closes_its_open_session(app: Flask, browser: FlaskClient) -> None:
    stored = "osk_stored-key-for-the-dashboard"
    with app.app_context():
        db.session.add(ApiKey(name="ops", key_hash=digest(stored)))
        db.session.commit()
    assert sign_in(browser, stored).status_code == 302
    assert browser.get("/dashboard/data").status_code == 200

    with app.app_context():
        key = db.session.query(ApiKey).filter_by(name="ops").one()
        key.revoked_at = utcnow()
        db.session.commit()

    assert browser.get("/dashboard/data").status_code == 401


def test_workers_of_one_host_sign_sessions_alike_without_a_secret_key(sqlite_settings: Settings) -> None:
    first, second = create_app(sqlite_settings), create_app(sqlite_settings)
    configured = create_app(sqlite_settings.model_copy(update={"secret_key": "from-the-environment"}))

    assert first.secret_key == second.secret_key
    assert (sqlite_settings.var_dir / "secret-key").stat().st_mode & 0o777 == 0o600
    assert configured.secret_key == "from-the-environment"
    for app in (first, second, configured):
        with app.app_context():
            db.engine.dispose()


def test_percentile_interpolates_between_ranks_as_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(n) for n in range(1, 21)], 0.95) == pytest.approx(19.05)


def _order(placed: datetime, status: str = PLACED, invoiced: datetime | None = None) -> Order:
    order = Order(customer_id="cus_1", currency="EUR", amount_total=1234, created_at=placed, status=status)
    order.invoiced_at = invoiced
    order.invoice_number = "INV-1" if invoiced else None
    return order


def _outbox_row(order_id: uuid.UUID, created: datetime, **columns: Any) -> dict[str, Any]:
    return {
        "message_id": uuid.uuid4(),
        "topic": ORDER_PLACED,
        "aggregate_type": "order",
        "aggregate_id": str(order_id),
        "bucket": 0,
        "payload": {},
        "headers": {},
        "created_at": created,
        "available_at": created,
        "attempts": 0,
        "redrives": 0,
        "published_at": None,
        "parked_at": None,
        "acknowledged_at": None,
        **columns,
    }


def test_data_counts_the_fixture_rows(app: Flask, browser: FlaskClient) -> None:
    now = utcnow()
    ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
    with app.app_context():
        # Invoiced in the window: latencies 2 s, 4 s and 10 s (invoiced_at - outbox.created_at).
        quick = [_order(ago(60), INVOICED, ago(58)), _order(ago(50), INVOICED, ago(46))]
        slow = _order(ago(40), INVOICED, ago(30))
        old = _order(ago(3600), INVOICED, ago(3500))  # invoiced long before the window
        due, backing_off, parked, waiting, redriven = (_order(ago(s)) for s in (20, 15, 12, 8, 5))
        db.session.add_all([*quick, slow, old, due, backing_off, parked, waiting, redriven])
        db.session.flush()
        rows = [
            _outbox_row(quick[0].id, ago(60), published_at=ago(59), acknowledged_at=ago(57)),
            _outbox_row(quick[1].id, ago(50), published_at=ago(49), acknowledged_at=ago(45)),
            _outbox_row(slow.id, ago(40), published_at=ago(39), acknowledged_at=ago(29), redrives=1),
            _outbox_row(old.id, ago(3600), published_at=ago(3599), acknowledged_at=ago(3500)),
            _outbox_row(due.id, ago(20)),
            _outbox_row(backing_off.id, ago(15), available_at=now + timedelta(seconds=60), attempts=2),
            _outbox_row(parked.id, ago(12), attempts=20, parked_at=ago(1)),
            _outbox_row(waiting.id, ago(8), published_at=ago(7)),
            _outbox_row(redriven.id, ago(5), published_at=ago(4), redrives=2),
        ]
        db.session.execute(insert(outbox), rows)
        db.session.commit()
    sign_in(browser)

    data = browser.get("/dashboard/data").get_json()

    assert (data["placed"], data["invoiced"], data["latency_samples"]) == (8, 3, 3)
    assert sum(data["placed_per_s"][:-1]) * data["bucket_s"] <= 8  # the current bucket is a rate so far
    assert len(data["bucket_starts"]) == data["window_s"] // data["bucket_s"] == 60
    assert data["latency_p50_s"] == pytest.approx(4.0)
    assert data["latency_p95_s"] == pytest.approx(9.4)  # 4 + (10 - 4) * 0.9
    assert data["backlog"] == 2  # due + backing off; the parked row is not backlog
    assert data["retrying"] == 1
    assert data["oldest_due_age_s"] == pytest.approx(20, abs=2)  # the row in backoff is not late
    assert data["parked"] == 1
    assert data["unacknowledged"] == 2  # waiting + redriven
    assert (data["redriven_unanswered"], data["redriven_answered"]) == (1, 1)
    assert [o["status"] for o in data["latest"][:3]] == [PLACED, PLACED, PLACED]
    assert data["latest"][0]["id"] == str(redriven.id)
    assert len(data["latest"]) == 9
