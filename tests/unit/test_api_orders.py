"""Reading orders: one by id, or pages newest first with filters; HTTP errors are problem documents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

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


@pytest.mark.parametrize("cursor", ["garbage", "Zm9vfGJhcg==", "!!!"])
def test_a_cursor_the_api_did_not_issue_is_a_400(client: FlaskClient, cursor: str) -> None:
    response = client.get("/orders", query_string={"cursor": cursor})

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


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
