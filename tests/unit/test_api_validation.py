"""Bad input never yields a 5xx, always a problem document, and never writes a row."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from order_service import create_app
from order_service.signals import Veto, order_placed
from shared.config import Settings
from tests.unit.conftest import AUTH

LINE = {"sku": "BOOK-1", "quantity": 2, "unit_amount": 1250}
ORDER: dict[str, Any] = {"customer_id": "cus_42", "currency": "EUR", "lines": [LINE]}
NOTHING = {"orders": 0, "order_lines": 0, "outbox": 0, "idempotency_keys": 0}


def order(**changes: Any) -> bytes:
    return json.dumps({**ORDER, **changes}).encode()


def line(**changes: Any) -> bytes:
    return order(lines=[{**LINE, **changes}])


JSON = "application/json"

# (case id, raw body, content type, status, JSON pointer the 422 must name)
BAD_INPUT = [
    ("truncated-json", b'{"customer_id": ', JSON, 400, None),
    ("not-json-at-all", b"customer_id=cus_42", JSON, 400, None),
    ("nan-is-not-json", b'{"customer_id": "c", "currency": "EUR", "lines": NaN}', JSON, 400, None),
    ("invalid-utf8", b'{"customer_id": "\xff\xfe"}', JSON, 400, None),
    ("deeply-nested", b"[" * 100_000 + b"]" * 100_000, JSON, 413, None),
    ("nested-within-limit", b"[" * 30_000 + b"]" * 30_000, JSON, 400, None),
    ("text-plain", order(), "text/plain", 415, None),
    ("form-encoded", b"customer_id=cus_42", "application/x-www-form-urlencoded", 415, None),
    ("no-content-type", order(), None, 415, None),
    ("top-level-array", b"[]", JSON, 422, ""),
    ("top-level-null", b"null", JSON, 422, ""),
    ("json-in-a-string", json.dumps(order().decode()).encode(), JSON, 422, ""),
    ("empty-object", b"{}", JSON, 422, "/customer_id"),
    ("customer-id-number", order(customer_id=42), JSON, 422, "/customer_id"),
    ("customer-id-empty", order(customer_id=""), JSON, 422, "/customer_id"),
    ("customer-id-too-long", order(customer_id="c" * 65), JSON, 422, "/customer_id"),
    ("customer-id-nul", order(customer_id="cus\u0000_42"), JSON, 422, "/customer_id"),
    ("customer-id-lone-surrogate", b'{"customer_id": "\\ud800", "currency": "EUR", "lines": []}', JSON, 422,
     "/customer_id"),
    ("currency-lowercase", order(currency="eur"), JSON, 422, "/currency"),
    ("currency-too-long", order(currency="EURO"), JSON, 422, "/currency"),
    ("currency-null", order(currency=None), JSON, 422, "/currency"),
    ("no-lines", order(lines=[]), JSON, 422, "/lines"),
    ("lines-not-a-list", order(lines={"sku": "A"}), JSON, 422, "/lines"),
    ("too-many-lines", order(lines=[LINE] * 101), JSON, 422, "/lines"),
    ("quantity-string", line(quantity="2"), JSON, 422, "/lines/0/quantity"),
    ("quantity-zero", line(quantity=0), JSON, 422, "/lines/0/quantity"),
    ("quantity-negative", line(quantity=-3), JSON, 422, "/lines/0/quantity"),
    ("quantity-too-big", line(quantity=10_001), JSON, 422, "/lines/0/quantity"),
    ("quantity-bool", line(quantity=True), JSON, 422, "/lines/0/quantity"),
    ("money-float", line(unit_amount=12.5), JSON, 422, "/lines/0/unit_amount"),
    ("money-integral-float", line(unit_amount=1250.0), JSON, 422, "/lines/0/unit_amount"),
    ("money-string", line(unit_amount="1250"), JSON, 422, "/lines/0/unit_amount"),
    ("money-decimal-string", line(unit_amount="12.50"), JSON, 422, "/lines/0/unit_amount"),
    ("money-negative", line(unit_amount=-1), JSON, 422, "/lines/0/unit_amount"),
    ("money-huge", line(unit_amount=10**30), JSON, 422, "/lines/0/unit_amount"),
    ("money-overflowing-float", b'{"customer_id": "c", "currency": "EUR", "lines": [{"sku": "A", '
     b'"quantity": 1, "unit_amount": 1e400}]}', JSON, 422, "/lines/0/unit_amount"),
    ("sku-sql-injection", line(sku="A'; DROP TABLE orders;--"), JSON, 422, "/lines/0/sku"),
    ("sku-missing", order(lines=[{"quantity": 1, "unit_amount": 1}]), JSON, 422, "/lines/0/sku"),
    ("client-sets-id", order(id="00000000-0000-0000-0000-000000000000"), JSON, 422, "/id"),
    ("client-sets-status", order(status="paid"), JSON, 422, "/status"),
    ("client-sets-total", order(amount_total=1), JSON, 422, "/amount_total"),
    ("client-sets-created-at", order(created_at="2020-01-01T00:00:00Z"), JSON, 422, "/created_at"),
    ("client-sets-line-total", line(amount_total=0), JSON, 422, "/lines/0/amount_total"),
    ("oversized-body", order(customer_id="c" * 70_000), JSON, 413, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "status", "pointer"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
def test_bad_input_gets_a_problem_document_and_writes_nothing(
    client: FlaskClient,
    row_counts: Callable[[], dict[str, int]],
    body: bytes,
    content_type: str | None,
    status: int,
    pointer: str | None,
) -> None:
    headers = {"Idempotency-Key": "bad-input-1"} | ({"Content-Type": content_type} if content_type else {})

    response = client.post("/orders", data=body, headers=headers)

    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= problem.keys()
    assert "Traceback" not in response.get_data(as_text=True)
    if pointer is not None:
        assert pointer in [error["pointer"] for error in problem["errors"]]
    assert row_counts() == NOTHING


@pytest.mark.parametrize(
    "customer_id",
    [
        "Robert'); DROP TABLE orders;--",
        "' OR '1'='1",
        "Zoë Ωmega 顧客 🧾",
        "<script>alert(1)</script>",
        "cus_\u202eevil",
    ],
)
def test_hostile_and_unicode_strings_are_stored_literally(client: FlaskClient, customer_id: str) -> None:
    created = client.post("/orders", json={**ORDER, "customer_id": customer_id})

    assert created.status_code == 201
    stored = client.get(f"/orders/{created.get_json()['id']}").get_json()
    assert stored["customer_id"] == customer_id
    listed = client.get("/orders", query_string={"customer_id": customer_id}).get_json()
    assert [o["id"] for o in listed["data"]] == [stored["id"]]


def test_the_default_body_limit_fits_the_largest_valid_order(client: FlaskClient, app: Flask) -> None:
    assert app.config["MAX_CONTENT_LENGTH"] == 64 * 1024
    lines = [{**LINE, "sku": f"SKU-{i}"} for i in range(100)]
    assert client.post("/orders", json={**ORDER, "lines": lines}).status_code == 201


def test_a_body_over_the_limit_is_a_413_problem(api_settings: Settings) -> None:
    small = create_app(api_settings)
    small.config["MAX_CONTENT_LENGTH"] = 100  # below MAX_REQUEST_BYTES: an order exceeds it

    response = small.test_client().post("/orders", data=order(), content_type=JSON, headers=AUTH)

    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"created_gte": "yesterday"}, "created_gte"),
        ({"created_gte": "2024-01-01T00:00:00"}, "created_gte"),
        ({"created_lt": "0001-01-01T00:00:00+01:00"}, "created_lt"),
        ({"created_lt": "0.0"}, "created_lt"),  # a number pydantic would read as a Unix time
        ({"created_gte": "1732536000"}, "created_gte"),
        ({"customer_id": ""}, "customer_id"),  # flask-openapi3 would read it as absent
        ({"status": "shipped"}, "status"),
        ({"customer_id": "a\u0000b"}, "customer_id"),
    ],
)
def test_invalid_list_parameters_are_named_in_a_422(
    client: FlaskClient, query: dict[str, str], parameter: str
) -> None:
    response = client.get("/orders", query_string=query)

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert parameter in [e["parameter"] for e in response.get_json()["errors"]]


def test_an_invalid_idempotency_key_is_named_as_a_header(
    client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    response = client.post("/orders", json=ORDER, headers={"Idempotency-Key": "k" * 256})

    assert response.status_code == 422
    assert "Idempotency-Key" in [e["header"] for e in response.get_json()["errors"]]
    assert row_counts() == NOTHING


def test_unauthenticated_bad_input_is_refused_before_it_is_read(app: Any) -> None:
    response = app.test_client().post("/orders", data=b"{", content_type=JSON)

    assert response.status_code == 401
    assert AUTH["Authorization"] not in response.get_data(as_text=True)


def _credit_check(sender: Any, **_: Any) -> Veto:
    """A receiver whose name must stay inside the service."""
    return Veto("customer is over their credit limit")


def test_a_vetoed_order_is_a_422_naming_the_reason_not_the_receiver(
    client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    order_placed.connect(_credit_check)
    try:
        response = client.post("/orders", data=order(), content_type=JSON)
    finally:
        order_placed.disconnect(_credit_check)

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["detail"] == problem["reason"] == "customer is over their credit limit"
    assert "_credit_check" not in response.get_data(as_text=True)
    assert "receiver" not in problem
    assert row_counts() == NOTHING


@pytest.mark.parametrize(
    "query",
    [
        "status=placed&status=invoiced",
        "limit=1&limit=200",
        "cursor=a&cursor=a",
        "customer_id=a&customer_id=b",
        "=1&=2",
    ],
)
def test_a_repeated_query_parameter_is_a_422_naming_it(client: FlaskClient, query: str) -> None:
    response = client.get(f"/orders?{query}")

    assert response.status_code == 422
    name = query.split("=", maxsplit=1)[0]
    assert response.get_json()["errors"] == [
        {"parameter": name, "detail": "Given 2 times; send it once", "code": "repeated"}
    ]


def test_a_repeated_idempotency_key_is_a_422_naming_the_header(
    client: FlaskClient, row_counts: Callable[[], dict[str, int]]
) -> None:
    headers = [("Idempotency-Key", "first-key"), ("Idempotency-Key", "second-key")]

    response = client.post("/orders", data=order(), content_type=JSON, headers=headers)

    assert response.status_code == 422
    assert [e["header"] for e in response.get_json()["errors"]] == ["Idempotency-Key"]
    assert row_counts() == NOTHING
