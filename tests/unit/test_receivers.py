"""The order transaction: receivers write outbox rows in it, and a refusal leaves nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from order_service.extensions import db
from order_service.models import Order, OrderLine, outbox
from order_service.signals import Veto, order_placed
from shared.contracts import ORDER_PLACED, parse_order_placed

ORDER = {
    "customer_id": "cus_42",
    "currency": "EUR",
    "lines": [
        {"sku": "BOOK-1", "quantity": 2, "unit_amount": 1250},
        {"sku": "PEN-9", "quantity": 1, "unit_amount": 99},
    ],
}


def _counts(app: Flask) -> tuple[int, int, int]:
    with app.app_context():
        return (
            db.session.scalar(select(func.count()).select_from(Order)) or 0,
            db.session.scalar(select(func.count()).select_from(OrderLine)) or 0,
            db.session.scalar(select(func.count()).select_from(outbox)) or 0,
        )


def test_placing_an_order_adds_one_order_placed_outbox_row(app: Flask, client: FlaskClient) -> None:
    response = client.post("/orders", json=ORDER)

    assert response.status_code == 201
    order = response.get_json()
    assert response.headers["Location"] == f"/orders/{order['id']}"
    assert order["amount_total"] == 2 * 1250 + 99
    with app.app_context():
        rows = db.session.execute(select(outbox)).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert row["topic"] == ORDER_PLACED
    assert row["aggregate_type"] == "order"
    assert row["aggregate_id"] == order["id"]
    assert row["published_at"] is None
    assert row["created_at"].tzinfo is not None
    event = parse_order_placed(row["payload"])
    assert event.order_id == order["id"]
    assert event.amount_total == order["amount_total"]
    assert [(line.sku, line.quantity, line.unit_amount) for line in event.lines] == [
        ("BOOK-1", 2, 1250),
        ("PEN-9", 1, 99),
    ]
    assert row["headers"]["schema_version"] == 1


def test_the_outbox_row_is_written_in_the_orders_transaction(app: Flask, client: FlaskClient) -> None:
    seen: list[tuple[bool, int]] = []

    def observe(sender: Any, *, order: Order, session: Any, **_: Any) -> None:
        # Runs after the invoice receiver: its row is in this very transaction, not yet committed.
        pending = session.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.aggregate_id == str(order.id))
        )
        seen.append((session.in_transaction(), pending))

    order_placed.connect(observe)
    try:
        assert client.post("/orders", json=ORDER).status_code == 201
    finally:
        order_placed.disconnect(observe)
    assert seen == [(True, 1)]


@pytest.fixture
def refusing_receiver(request: pytest.FixtureRequest) -> Iterator[None]:
    behaviour = request.param

    def refuse(sender: Any, **_: Any) -> object:
        if behaviour == "raises":
            raise RuntimeError("ledger unavailable")
        return Veto("customer is blocked") if behaviour == "veto" else False

    order_placed.connect(refuse)
    yield
    order_placed.disconnect(refuse)


@pytest.mark.parametrize(
    ("refusing_receiver", "status", "title"),
    [("raises", 500, "Internal error"), ("veto", 422, "Order refused"), ("false", 422, "Order refused")],
    indirect=["refusing_receiver"],
)
@pytest.mark.usefixtures("refusing_receiver")
def test_a_refusing_receiver_leaves_no_order_and_no_outbox_row(
    app: Flask, client: FlaskClient, status: int, title: str
) -> None:
    response = client.post("/orders", json=ORDER)

    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["title"] == title
    assert problem["status"] == status
    assert "Traceback" not in response.get_data(as_text=True)
    assert _counts(app) == (0, 0, 0)


def test_a_veto_names_its_reason(client: FlaskClient) -> None:
    def refuse(sender: Any, **_: Any) -> Veto:
        return Veto("customer is blocked")

    order_placed.connect(refuse)
    try:
        problem = client.post("/orders", json=ORDER).get_json()
    finally:
        order_placed.disconnect(refuse)
    assert problem["detail"] == "customer is blocked"


def test_the_invoice_receiver_is_connected_once_however_many_apps(app: Flask, sqlite_settings: Any) -> None:
    from order_service import create_app

    create_app(sqlite_settings)
    receivers = [
        r for r in order_placed.receivers_for(object()) if getattr(r, "__name__", "") == "request_invoice"
    ]
    assert len(receivers) == 1
