"""Reading orders: one by id, or pages newest first with filters; HTTP errors are problem documents."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import update

from order_service import cursor
from order_service.extensions import db
from order_service.models import Order


def _order(customer_id: str, amount: int = 100) -> dict[str, Any]:
    line = {"sku": "A", "quantity": 1, "unit_amount": amount}
    return {"customer_id": customer_id, "currency": "EUR", "lines": [line]}


@pytest.fixture
def placed(app: Flask, client: FlaskClient) -> list[dict[str, Any]]:
    """Seven orders, one minute apart (oldest first), for two customers."""
    orders = [client.post("/orders", json=_order(f"cus_{i % 2}", i)).get_json() for i in range(7)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with app.app_context():
        for i, order in enumerate(orders):
            moment = start + timedelta(minutes=i)
            by_id = Order.id == uuid.UUID(order["id"])
            db.session.execute(update(Order).where(by_id).values(created_at=moment))
            order["created_at"] = moment
        db.session.commit()
    return orders


def _all_pages(client: FlaskClient, **query: Any) -> list[list[str]]:
    pages, cursor = [], None
    for _ in range(20):
        params = {**query, **({"cursor": cursor} if cursor else {})}
        page = client.get("/orders", query_string=params).get_json()
        pages.append([o["id"] for o in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("pagination did not end")


def test_orders_are_paged_newest_first_without_gaps_or_repeats(
    client: FlaskClient, placed: list[dict[str, Any]]
) -> None:
    pages = _all_pages(client, limit=3)

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == [o["id"] for o in reversed(placed)]


def test_orders_are_filtered_by_customer_status_and_created_range(
    client: FlaskClient, placed: list[dict[str, Any]]
) -> None:
    query = {
        "customer_id": "cus_0",
        "status": "placed",
        "created_gte": placed[2]["created_at"].isoformat(),
        "created_lt": placed[6]["created_at"].isoformat(),
        "limit": 1,
    }

    pages = _all_pages(client, **query)

    assert [i for page in pages for i in page] == [placed[4]["id"], placed[2]["id"]]


def test_an_order_is_read_by_id(client: FlaskClient) -> None:
    created = client.post("/orders", json=_order("cus_5", 250)).get_json()

    response = client.get(f"/orders/{created['id']}")

    assert response.status_code == 200
    assert response.get_json() == created


@pytest.mark.parametrize("order_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "%00"])
def test_an_unknown_order_is_a_404_problem(client: FlaskClient, order_id: str) -> None:
    response = client.get(f"/orders/{order_id}")

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == "about:blank"


def _crafted(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


ANY_ID = "0b9a5f3e-6c1d-4c47-9d4e-3f1c2a7b8e90"
CRAFTED_CURSORS = {
    "garbage": "garbage",
    "not a position": "Zm9vfGJhcg==",
    "not base64": "!!!",
    "naive timestamp": _crafted(f"2026-01-01T00:00:00|{ANY_ID}"),
    "year 1 east of UTC": _crafted(f"0001-01-01T00:30:00+01:00|{ANY_ID}"),
    "year 9999 west of UTC": _crafted(f"9999-12-31T23:30:00-01:00|{ANY_ID}"),
    "offset other than UTC": _crafted(f"2026-01-01T01:00:00+01:00|{ANY_ID}"),
    "uuid in braces": _crafted(f"2026-01-01T00:00:00+00:00|{{{ANY_ID}}}"),
    "three fields": _crafted(f"2026-01-01T00:00:00+00:00|{ANY_ID}|x"),
    "non-ASCII": _crafted(f"2026-01-01T00:00:00+00:00\u00a0|{ANY_ID}"),
    "unpadded": _crafted(f"2026-01-01T00:00:00+00:00|{ANY_ID}").rstrip("="),
}


@pytest.mark.parametrize("cursor", CRAFTED_CURSORS.values(), ids=CRAFTED_CURSORS.keys())
def test_a_cursor_the_api_did_not_issue_is_a_400_naming_the_parameter(
    client: FlaskClient, cursor: str
) -> None:
    response = client.get("/orders", query_string={"cursor": cursor})

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert [e["parameter"] for e in response.get_json()["errors"]] == ["cursor"]


@pytest.mark.parametrize(
    "created_at", [datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)], ids=["first", "last"]
)
def test_a_cursor_at_either_end_of_the_calendar_pages_normally(
    client: FlaskClient, placed: list[dict[str, Any]], created_at: datetime
) -> None:
    token = cursor.encode(created_at, uuid.UUID(ANY_ID))

    response = client.get("/orders", query_string={"cursor": token})

    assert response.status_code == 200
    assert len(response.get_json()["data"]) == (0 if created_at.year == 1 else len(placed))


def test_a_wrong_method_is_a_405_problem_with_allow(client: FlaskClient) -> None:
    response = client.delete("/orders")

    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_an_unknown_path_is_a_404_problem(client: FlaskClient) -> None:
    response = client.get("/nowhere")

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_an_unexpected_error_is_a_500_problem_without_internals(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret connection string postgres://u:p@h/db")

    monkeypatch.setattr("order_service.api._filtered", explode)

    response = client.get("/orders")

    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    body = response.get_data(as_text=True)
    assert "Traceback" not in body
    assert "secret" not in body


DATABASE_OVERLOAD = {
    "pool timeout": sa_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached"),
    "interface error": sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    "operational error": sa_exc.OperationalError("SELECT 1", {}, Exception("canceling statement")),
}


@pytest.mark.parametrize("error", DATABASE_OVERLOAD.values(), ids=DATABASE_OVERLOAD.keys())
def test_database_overload_is_a_503_with_retry_after(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def overloaded(*_: Any, **__: Any) -> None:
        raise error

    monkeypatch.setattr("order_service.api._filtered", overloaded)

    response = client.get("/orders")

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    assert "QueuePool" not in response.get_data(as_text=True)
