"""The published contract: /openapi.json is valid OpenAPI 3.1, and the app honours it under fuzzing.

schemathesis generates valid and invalid requests for every documented operation: every query
parameter, header and path value, cursors included. Cursors and order ids are not left to chance
(a random string is never a cursor): half the cases carry one the API really issued while paging
real orders, the other half a mutated one (tests/support/contract.py). Every response is checked:
no 5xx, status, headers, content type and body as documented, and every 400/422 is a problem
document naming the parameter, header or field it rejects.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import Response
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from order_service import create_app
from order_service.extensions import db
from shared.config import Settings
from tests.support.contract import Issued, cursors, issue, order_ids, sendable_query
from tests.unit.conftest import API_KEY

MAX_EXAMPLES = 60
"""Per operation and generation mode: enough to find contract breaks, small enough for CI."""

HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300
).map(str.lstrip)
"""Header values a client library can send (latin-1, no line breaks, no leading space)."""

WRONG_AUTHORIZATION = st.sampled_from(
    ["", "Bearer", "Bearer ", "Basic " + API_KEY, "Bearer " + API_KEY + "x"]
) | (HEADER_TEXT.map(lambda text: "Bearer " + text))


@pytest.fixture
def contract_app(api_settings: Settings) -> Iterator[Flask]:
    """Limits out of the way: the fuzzer sends thousands of requests, hundreds with wrong keys."""
    unlimited = {"rate_limit": "1000000 per minute", "auth_failure_rate_limit": "1000000 per minute"}
    app = create_app(api_settings.model_copy(update=unlimited))
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def issued(contract_app: Flask) -> Issued:
    client = contract_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_KEY}"
    return issue(contract_app, client)


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


def _header(response: Response, name: str) -> str:
    return response.headers.get(name.lower(), [""])[0]


def _names_what_it_rejects(response: Response) -> None:
    """A 400 or 422 is a problem document whose ``errors`` name each rejected input."""
    assert _header(response, "Content-Type").startswith("application/problem+json")
    problem = json.loads(response.content)
    if response.status_code == 400 and "errors" not in problem:
        assert "JSON" in problem["detail"]  # a malformed body as a whole: there is no field to name
        return
    assert problem["errors"], problem
    for error in problem["errors"]:
        assert any(error.get(where) is not None for where in ("parameter", "header", "pointer")), problem


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
        # Health has no input to break, and an order id is any string: a wrong one is the positive 404.
        if mode is GenerationMode.POSITIVE or path in ("/orders",)
    ],
)
def test_the_api_honours_its_openapi_document(
    contract_app: Flask, issued: Issued, method: str, path: str, mode: GenerationMode
) -> None:
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"bearerAuth": {"bearer": API_KEY}}},
            "generation": {"with-security-parameters": False},  # the key stays valid: wrong keys are below
        }
    )
    operation = schemathesis.openapi.from_wsgi("/openapi.json", contract_app, config=config)[path][method]
    statuses: Counter[str] = Counter()
    positive = mode is GenerationMode.POSITIVE

    strategy = operation.as_strategy(generation_mode=mode)
    if positive:
        strategy = strategy.filter(lambda case: not _floats(case.body))

    @given(case=strategy, data=st.data())
    @settings(
        max_examples=MAX_EXAMPLES * (3 if (method, path) == ("GET", "/orders") else 1),  # cursors: more
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def honours(case: schemathesis.Case, data: st.DataObject) -> None:
        # Some generated "invalid" query values cannot be sent at all (null, an object, an empty array):
        # the client leaves the parameter out, which is valid. Only what a query string can carry counts.
        assume(positive or sendable_query(case.query))
        excluded = []
        label = "generated"
        if positive and "Idempotency-Key" in (case.headers or {}):
            case.headers["Idempotency-Key"] = str(uuid.uuid4())  # keys are state: a reused one is a 422
        if positive and path == "/orders" and method == "GET":
            case.query = {k: v for k, v in (case.query or {}).items() if k != "cursor"}  # random: never valid
        if positive and path == "/orders" and method == "GET" and data.draw(st.integers(0, 3), "cursor?"):
            cursor, as_issued = data.draw(cursors(issued), "cursor")
            case.query = {**case.query, "cursor": cursor}
            label = "issued cursor" if as_issued else "mutated cursor"
            if not as_issued:
                excluded.append(positive_data_acceptance)  # a schema-valid string, but not a cursor: 400
        if positive and path == "/orders/{order_id}":
            case.path_parameters = {"order_id": data.draw(order_ids(issued), "order id")}
            excluded.append(positive_data_acceptance)  # an id that names no order is a 404
            label = "drawn id"
        if data.draw(st.booleans(), "with X-Request-ID"):
            case.headers = {**(case.headers or {}), "X-Request-ID": data.draw(HEADER_TEXT, "X-Request-ID")}

        response = case.call_and_validate(excluded_checks=excluded)

        statuses[f"{label} {response.status_code}"] += 1
        assert response.status_code < 500
        if response.status_code in (400, 422):
            _names_what_it_rejects(response)
        if label == "mutated cursor":
            assert response.status_code in (200, 400), response.content
        if label == "issued cursor":
            assert response.status_code == 200, response.content

    honours()
    print(f"schemathesis {method} {path} {mode.value}: {sorted(statuses.items())}")
    assert statuses
    if positive and path == "/orders" and method == "GET":
        assert statuses.keys() >= {"issued cursor 200", "mutated cursor 400"}


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[1].startswith("/orders")])
def test_every_operation_refuses_a_missing_or_wrong_key_with_a_documented_401(
    contract_app: Flask, issued: Issued, method: str, path: str
) -> None:
    operation = schemathesis.openapi.from_wsgi("/openapi.json", contract_app)[path][method]
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(), authorization=WRONG_AUTHORIZATION | st.none())
    @settings(max_examples=MAX_EXAMPLES // 2, deadline=None, database=None, derandomize=True)
    def refused(case: schemathesis.Case, authorization: str | None) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if authorization is not None:
            headers["Authorization"] = authorization
        case.headers = headers

        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])

        statuses[response.status_code] += 1
        assert response.status_code == 401
        assert _header(response, "WWW-Authenticate").startswith('Bearer realm="orders"')

    refused()
    print(f"wrong keys {method} {path}: {dict(statuses)}")
