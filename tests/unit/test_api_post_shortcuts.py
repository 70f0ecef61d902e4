"""The per-request shortcuts of ``POST /orders`` answer exactly what the long way did."""

from __future__ import annotations

import uuid

from flask import Flask, url_for
from flask.testing import FlaskClient

ORDER = {
    "customer_id": "cus_9",
    "currency": "EUR",
    "lines": [
        {"sku": "BOOK-1", "quantity": 2, "unit_amount": 1250},
        {"sku": "PEN-4", "quantity": 1, "unit_amount": 199},
    ],
}


def test_a_keyed_order_answers_the_very_bytes_its_key_replays(client: FlaskClient) -> None:
    headers = {"Idempotency-Key": f"test-{uuid.uuid4()}"}

    first = client.post("/orders", json=ORDER, headers=headers)
    again = client.post("/orders", json=ORDER, headers=headers)

    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.get_data() == first.get_data()


def test_location_is_what_url_for_builds_under_a_script_root(app: Flask, client: FlaskClient) -> None:
    response = client.post("/orders", json=ORDER, base_url="http://localhost/api")

    order_id = response.get_json()["id"]
    with app.test_request_context(base_url="http://localhost/api"):
        expected = url_for("orders.get_order", order_id=order_id)
    assert response.headers["Location"] == expected == f"/api/orders/{order_id}"


def test_the_session_serializer_is_built_once_per_secret_key(app: Flask) -> None:
    sessions = app.session_interface
    first = sessions.get_signing_serializer(app)  # type: ignore[attr-defined]

    assert sessions.get_signing_serializer(app) is first  # type: ignore[attr-defined]
    app.secret_key = "rotated-" + uuid.uuid4().hex
    rotated = sessions.get_signing_serializer(app)  # type: ignore[attr-defined]
    assert rotated is not first
    assert rotated.loads(rotated.dumps({"n": 1})) == {"n": 1}
