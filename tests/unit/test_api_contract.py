"""The published contract: /openapi.json is valid OpenAPI 3.1, and the app honours it under fuzzing.

schemathesis generates valid and invalid requests for every documented operation (with the API
key), and checks each response: no 5xx, and status, headers, content type and body as documented.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from order_service import create_app
from order_service.extensions import db
from shared.config import Settings
from tests.unit.conftest import API_KEY

MAX_EXAMPLES = 40
"""Per operation and generation mode: enough to find contract breaks, small enough for CI."""


@pytest.fixture
def contract_app(api_settings: Settings) -> Iterator[Flask]:
    app = create_app(api_settings.model_copy(update={"rate_limit": "1000000 per minute"}))
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


def test_the_document_is_valid_openapi_3_1(contract_app: Flask) -> None:
    document = contract_app.test_client().get("/openapi.json").get_json()

    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)


def test_every_endpoint_is_documented_and_secured_as_served(contract_app: Flask) -> None:
    paths = contract_app.test_client().get("/openapi.json").get_json()["paths"]

    operations = {(path, method) for path, item in paths.items() for method in item}
    assert operations == {
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{order_id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    }
    secured = {(p, m) for p, item in paths.items() for m, op in item.items() if op.get("security")}
    assert secured == {("/orders", "post"), ("/orders", "get"), ("/orders/{order_id}", "get")}


def _floats(value: object) -> bool:
    """JSON Schema counts 1250.0 as an integer; the API refuses it on purpose (money is never a float).

    So positive cases ("schema-valid, hence accepted") carrying a float are skipped; negative cases
    and the table-driven tests keep checking that such numbers are refused.
    """
    if isinstance(value, dict):
        return any(_floats(v) for v in value.values())
    if isinstance(value, list):
        return any(_floats(v) for v in value)
    return isinstance(value, float)


def _acceptable(case: schemathesis.Case) -> bool:
    """Schema-valid *and* valid: no float money (above), no cursor the API never issued (an opaque token)."""
    return not _floats(case.body) and "cursor" not in (case.query or {})


OPERATIONS = [
    ("POST", "/orders"),
    ("GET", "/orders"),
    ("GET", "/orders/{order_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
        for method, path in OPERATIONS
        for mode in GenerationMode
        if mode is GenerationMode.POSITIVE or path.startswith("/orders")  # health has no input to break
    ],
)
def test_the_api_honours_its_openapi_document(
    contract_app: Flask, method: str, path: str, mode: GenerationMode
) -> None:
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"bearerAuth": {"bearer": API_KEY}}}})
    operation = schemathesis.openapi.from_wsgi("/openapi.json", contract_app, config=config)[path][method]
    cases: list[int] = []

    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = strategy.filter(_acceptable)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def honours(case: schemathesis.Case) -> None:
        if "Idempotency-Key" in (case.headers or {}):
            case.headers["Idempotency-Key"] = str(uuid.uuid4())  # keys are state: a reused one is a 422
        response = case.call_and_validate()
        cases.append(response.status_code)

    honours()
    print(f"schemathesis {method} {path} {mode.value}: {len(cases)} cases, statuses {sorted(set(cases))}")
    assert cases
    assert max(cases) < 500
