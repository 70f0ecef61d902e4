"""Cursor and filter fuzzing against real Postgres: what binds on SQLite must bind (or be refused) here too.

The reported 500 came from the bind step; Postgres has its own range and type rules (timestamptz at
year 1 and 9999, uuid), so issued and mutated cursors, order ids and every filter are replayed here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from order_service import create_app
from order_service.extensions import db
from shared.config import Settings
from tests.support.contract import Issued, cursors, issue, order_ids, sendable_query

API_KEY = "osk_contract-postgres-0123456789abcdef"
EXAMPLES = 80


@pytest.fixture
def pg_contract_app(pg_settings: Settings) -> Iterator[Flask]:
    unlimited = {"rate_limit": "1000000 per minute", "auth_failure_rate_limit": "1000000 per minute"}
    app = create_app(pg_settings.model_copy(update={"api_keys": API_KEY, **unlimited}))
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def issued(pg_contract_app: Flask) -> Issued:
    client = pg_contract_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_KEY}"
    return issue(pg_contract_app, client)


def _operation(app: Flask, path: str) -> schemathesis.APIOperation:
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"bearerAuth": {"bearer": API_KEY}}},
            "generation": {"with-security-parameters": False},
        }
    )
    return schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)[path]["GET"]


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_listing_with_issued_mutated_and_generated_input_never_fails_on_postgres(
    pg_contract_app: Flask, issued: Issued, mode: GenerationMode
) -> None:
    operation = _operation(pg_contract_app, "/orders")
    statuses: Counter[str] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def honours(case: schemathesis.Case, data: st.DataObject) -> None:
        assume(mode is GenerationMode.POSITIVE or sendable_query(case.query))
        excluded = []
        label = "generated"
        if mode is GenerationMode.POSITIVE:
            cursor, as_issued = data.draw(cursors(issued), "cursor")
            case.query = {**{k: v for k, v in (case.query or {}).items() if k != "cursor"}, "cursor": cursor}
            label = "issued" if as_issued else "mutated"
            if not as_issued:
                excluded.append(positive_data_acceptance)

        response = case.call_and_validate(excluded_checks=excluded)

        statuses[f"{label} {response.status_code}"] += 1
        assert response.status_code < 500
        if label == "issued":
            assert response.status_code == 200

    honours()
    print(f"postgres GET /orders {mode.value}: {sorted(statuses.items())}")


def test_reading_drawn_order_ids_never_fails_on_postgres(pg_contract_app: Flask, issued: Issued) -> None:
    operation = _operation(pg_contract_app, "/orders/{order_id}")
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(), order_id=order_ids(issued))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True)
    def honours(case: schemathesis.Case, order_id: str) -> None:
        case.path_parameters = {"order_id": order_id}

        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])

        statuses[response.status_code] += 1
        assert response.status_code in (200, 404)

    honours()
    print(f"postgres GET /orders/{{order_id}}: {dict(statuses)}")
