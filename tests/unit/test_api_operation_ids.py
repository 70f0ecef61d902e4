"""The order operations have stable, explicit operationIds in /openapi.json (client generators name
their methods after them): not the ones flask-openapi3 derives from the function and the path."""

from __future__ import annotations

from flask.testing import FlaskClient

EXPECTED = {
    ("post", "/orders"): "createOrder",
    ("get", "/orders/{order_id}"): "getOrder",
    ("get", "/orders"): "listOrders",
}


def test_the_order_operations_have_explicit_operation_ids(client: FlaskClient) -> None:
    response = client.get("/openapi.json")

    assert response.status_code == 200
    paths = response.get_json()["paths"]
    found = {(method, path): paths[path][method].get("operationId") for method, path in EXPECTED}
    assert found == EXPECTED


def test_operation_ids_are_unique(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    ids = [op["operationId"] for item in paths.values() for op in item.values() if "operationId" in op]

    assert len(ids) == len(set(ids))
