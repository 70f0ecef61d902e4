"""Message contracts between the order service and its consumers, and the task names they meet on.

Money is an integer amount in the currency's smallest unit; times are ISO 8601 UTC strings; ids are
UUIDs in one textual form only (``CANONICAL_ID``), so a text comparison and a UNIQUE index see one id
once: ``uuid.UUID()`` would also take upper case, braces, ``urn:uuid:`` or no hyphens.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from flask_outbox import Route
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, model_validator

__all__ = [
    "CANONICAL_ID",
    "INVOICE_CREATED",
    "ORDER_PLACED",
    "ROUTES",
    "SCHEMA_VERSION_HEADER",
    "InvoiceCreated",
    "OrderPlaced",
    "OrderPlacedLine",
    "Route",
    "UnsupportedSchemaVersion",
    "outbox_headers",
    "parse_invoice_created",
    "parse_order_placed",
]

ORDER_PLACED: Final = "order.placed"
INVOICE_CREATED: Final = "invoice.created"
SCHEMA_VERSION_HEADER: Final = "schema_version"


ROUTES: Final[dict[str, Route]] = {
    ORDER_PLACED: Route(
        task="invoices.order_placed", queue="invoices", batch_task="invoices.order_placed_batch"
    ),
    INVOICE_CREATED: Route(
        task="orders.invoice_created", queue="orders", batch_task="orders.invoice_created_batch"
    ),
}


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    return value.astimezone(UTC)


Amount = Annotated[StrictInt, Field(ge=0)]

CANONICAL_ID: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""The one form an id takes in a message: ``str(uuid.UUID)``, lower case with hyphens."""

Id = Annotated[str, Field(pattern=CANONICAL_ID)]


class OrderPlacedLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: Annotated[StrictInt, Field(ge=1)]
    unit_amount: Amount
    amount_total: Amount

    @model_validator(mode="after")
    def _total_matches(self) -> OrderPlacedLine:
        if self.amount_total != self.quantity * self.unit_amount:
            raise ValueError("line amount_total must equal quantity * unit_amount")
        return self


class OrderPlaced(BaseModel):
    """``order.placed`` v1: an order was committed; its consumer makes exactly one invoice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    order_id: Id
    customer_id: str = Field(min_length=1, max_length=64)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    lines: list[OrderPlacedLine] = Field(min_length=1)
    amount_total: Amount
    placed_at: Annotated[datetime, AfterValidator(_utc)]

    @model_validator(mode="after")
    def _total_matches(self) -> OrderPlaced:
        if self.amount_total != sum(line.amount_total for line in self.lines):
            raise ValueError("amount_total must equal the sum of the lines")
        return self

    def to_payload(self) -> dict[str, Any]:
        """Plain JSON types only: what goes into the outbox and over the broker."""
        return self.model_dump(mode="json")


class InvoiceCreated(BaseModel):
    """``invoice.created`` v1: the invoice for an order exists; it answers one ``order.placed``.

    ``causation_id`` is the ``message_id`` of the ``order.placed`` it answers: the order side
    acknowledges its outbox row by it. A re-driven ``order.placed`` keeps its ``message_id``, so
    a repeated answer for an existing invoice carries the same number and acknowledges the same row.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    order_id: Id
    invoice_number: str = Field(min_length=1, max_length=64)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    amount_total: Amount
    causation_id: Id
    invoiced_at: Annotated[datetime, AfterValidator(_utc)]

    def to_payload(self) -> dict[str, Any]:
        """Plain JSON types only: what goes into the outbox and over the broker."""
        return self.model_dump(mode="json")


def outbox_headers(message: OrderPlaced | InvoiceCreated) -> dict[str, Any]:
    """What an outbox row of ``message`` carries besides its payload: its version and its order."""
    headers: dict[str, Any] = {SCHEMA_VERSION_HEADER: message.schema_version, "order_id": message.order_id}
    if isinstance(message, InvoiceCreated):
        headers["causation_id"] = message.causation_id
    return headers


class UnsupportedSchemaVersion(ValueError):
    """The message's major version is not one this consumer understands."""


def parse_order_placed(payload: dict[str, Any]) -> OrderPlaced:
    """Validate an ``order.placed`` payload; unknown major versions are refused, not guessed at."""
    version = payload.get("schema_version")
    if version != 1:
        raise UnsupportedSchemaVersion(f"order.placed schema_version {version!r} is not supported")
    return OrderPlaced.model_validate(payload)


def parse_invoice_created(payload: dict[str, Any]) -> InvoiceCreated:
    """Validate an ``invoice.created`` payload; unknown major versions are refused, not guessed at."""
    version = payload.get("schema_version")
    if version != 1:
        raise UnsupportedSchemaVersion(f"invoice.created schema_version {version!r} is not supported")
    return InvoiceCreated.model_validate(payload)
