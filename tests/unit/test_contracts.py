"""The ``order.placed`` contract: integer money, aware UTC times, versions checked on both sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.contracts import (
    ORDER_PLACED,
    ROUTES,
    UnsupportedSchemaVersion,
    parse_invoice_created,
    parse_order_placed,
)
from tests.support.events import order_placed_event

ID = "0d4faa03-373d-40eb-9785-8f0a94b3e18a"
NON_CANONICAL_IDS = [ID.upper(), f"{{{ID}}}", f"urn:uuid:{ID}", ID.replace("-", ""), f"{ID}\n", f" {ID}"]


def _payload(**changes: Any) -> dict[str, Any]:
    return {**order_placed_event(quantity=2, unit_amount=1250).to_payload(), **changes}


def test_a_payload_is_plain_json_with_integer_money_and_an_iso_utc_time() -> None:
    payload = _payload()

    assert payload["schema_version"] == 1
    assert payload["amount_total"] == 2500
    assert isinstance(payload["lines"][0]["unit_amount"], int)
    assert payload["placed_at"].endswith("Z")
    assert parse_order_placed(payload).amount_total == 2500


@pytest.mark.parametrize(
    "change",
    [
        {"amount_total": 25.0},
        {"amount_total": "2500"},
        {"amount_total": 2499},
        {"currency": "eur"},
        {"lines": []},
        {"placed_at": "2026-11-24T10:00:00"},
        {"surprise": True},
    ],
    ids=[
        "float-money",
        "string-money",
        "wrong-total",
        "lowercase-currency",
        "no-lines",
        "naive-time",
        "extra",
    ],
)
def test_an_invalid_payload_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_order_placed(_payload(**change))


@pytest.mark.parametrize("order_id", NON_CANONICAL_IDS)
def test_an_id_in_any_form_but_lower_case_with_hyphens_is_refused(order_id: str) -> None:
    """``uuid.UUID()`` takes all of these, but an invoice is UNIQUE on the text: one order, one spelling."""
    answer = {
        "schema_version": 1,
        "order_id": ID,
        "invoice_number": "INV-00000001",
        "currency": "EUR",
        "amount_total": 2500,
        "causation_id": ID,
        "invoiced_at": "2026-11-24T18:00:00Z",
    }
    assert parse_order_placed(_payload(order_id=ID)).order_id == ID
    assert parse_invoice_created(answer).causation_id == ID

    with pytest.raises(ValidationError, match="order_id"):
        parse_order_placed(_payload(order_id=order_id))
    with pytest.raises(ValidationError, match="order_id"):
        parse_invoice_created({**answer, "order_id": order_id})
    with pytest.raises(ValidationError, match="causation_id"):
        parse_invoice_created({**answer, "causation_id": order_id})


@pytest.mark.parametrize("version", [2, None, "1"])
def test_an_unknown_schema_version_is_refused_not_guessed(version: object) -> None:
    with pytest.raises(UnsupportedSchemaVersion):
        parse_order_placed(_payload(schema_version=version))


def test_order_placed_is_routed_to_the_invoices_queue_by_task_name() -> None:
    assert ROUTES[ORDER_PLACED].queue == "invoices"
    assert ROUTES[ORDER_PLACED].task == "invoices.order_placed"


def test_unset_urls_mean_the_embedded_mode_under_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ORDERS_DATABASE_URL", "INVOICES_DATABASE_URL", "BROKER_URL"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings(_env_file=None, var_dir=tmp_path)  # type: ignore[call-arg]

    assert settings.orders_database_url == f"sqlite:///{tmp_path.resolve() / 'orders.sqlite3'}"
    assert settings.invoices_database_url == f"sqlite:///{tmp_path.resolve() / 'invoices.sqlite3'}"
    assert settings.uses_embedded_broker
    with pytest.raises(ValidationError):
        settings.__class__.model_validate({"relay_batch_size": 0})
