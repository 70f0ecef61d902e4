"""Per-request work that start-up can do once: header and query schemas are not rebuilt per request."""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient
from pydantic.json_schema import GenerateJsonSchema

ORDER = {
    "customer_id": "cus_1",
    "currency": "EUR",
    "lines": [{"sku": "A-1", "quantity": 1, "unit_amount": 5}],
}


def test_validating_headers_and_queries_builds_no_json_schema_per_request(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/orders", json=ORDER, headers={"Idempotency-Key": str(uuid.uuid4())})  # first use builds
    client.get("/orders?limit=5")
    built: list[object] = []
    generate = GenerateJsonSchema.generate

    def counting(self: GenerateJsonSchema, *args: object, **kwargs: object) -> object:
        built.append(args)
        return generate(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(GenerateJsonSchema, "generate", counting)
    for _ in range(3):
        assert (
            client.post("/orders", json=ORDER, headers={"Idempotency-Key": str(uuid.uuid4())}).status_code
            == 201
        )
        assert client.get("/orders?limit=5").status_code == 200
    assert built == []
