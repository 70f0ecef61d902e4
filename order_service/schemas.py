"""The HTTP contract of the order API: request, response and problem bodies (the OpenAPI source)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from order_service.cursor import MAX_LENGTH as CURSOR_MAX_LENGTH
from order_service.models import Order, line_fields

__all__ = [
    "FieldError",
    "IdempotencyHeader",
    "OrderCreated",
    "OrderIn",
    "OrderLineIn",
    "OrderLineOut",
    "OrderOut",
    "OrderPage",
    "OrderPath",
    "OrderQuery",
    "OrderStatus",
    "Problem",
    "Status",
]

MAX_UNIT_AMOUNT = 100_000_000_00
"""Bounded so that 100 lines x 10 000 units still fits comfortably in a BIGINT."""

TEXT = r"^[^\x00-\x1f\x7f]+$"
"""Any Unicode but control characters (Postgres refuses NUL in text; the rest is never meant)."""


def _to_utc(value: datetime) -> datetime:
    """Reject instants that only exist in a local zone (year 1 at +01:00) instead of failing later."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of the representable range in UTC") from None


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: object) -> object:
    """Only an RFC 3339 date-time, as the OpenAPI document says: not a number pydantic reads as epoch."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with a time zone, e.g. 2026-11-25T12:00:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_to_utc)]
CustomerId = Annotated[str, Field(min_length=1, max_length=64, pattern=TEXT, examples=["cus_42"])]


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["BOOK-1"])]
    quantity: Annotated[StrictInt, Field(ge=1, le=10_000)]
    unit_amount: Annotated[
        StrictInt,
        Field(
            ge=0,
            le=MAX_UNIT_AMOUNT,
            description="Minor units, as an integer literal (1250.0 is refused)",
        ),
    ]


class OrderIn(BaseModel):
    """The order a client submits; the server sets id, status, totals and timestamps."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code", examples=["EUR"])]
    lines: Annotated[list[OrderLineIn], Field(min_length=1, max_length=100)]


class OrderLineOut(BaseModel):
    sku: str
    quantity: int
    unit_amount: int
    amount_total: int


OrderStatus = Literal["placed", "invoiced"]
"""``placed`` when accepted; ``invoiced`` once the invoice service confirmed its invoice. Never back."""


class OrderOut(BaseModel):
    id: uuid.UUID
    status: Annotated[OrderStatus, Field(description="placed, then invoiced once its invoice exists")]
    customer_id: str
    currency: str
    amount_total: int
    lines: list[OrderLineOut]
    created_at: datetime
    invoice_number: Annotated[str | None, Field(description="Set when invoiced; null before")] = None
    invoiced_at: Annotated[datetime | None, Field(description="When the invoice was made; else null")] = None

    @classmethod
    def of(cls, order: Order) -> OrderOut:
        return cls(
            id=order.id,
            status=cast(OrderStatus, order.status),  # validated: an unknown status is an error, not hidden
            customer_id=order.customer_id,
            currency=order.currency,
            amount_total=order.amount_total,
            lines=[OrderLineOut(**line) for line in line_fields(order)],
            created_at=order.created_at,
            invoice_number=order.invoice_number,
            invoiced_at=order.invoiced_at,
        )


class OrderCreated(OrderOut):
    """The placed order; a replayed ``Idempotency-Key`` answers the stored original."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # flask-openapi3's extension key
        openapi_extra={
            "headers": {
                "Location": {"schema": {"type": "string"}, "description": "URL of the order"},
                "Idempotent-Replayed": {
                    "schema": {"type": "string", "enum": ["true"]},
                    "description": "Present when this is the stored response of an earlier request",
                },
            }
        }
    )


class Status(BaseModel):
    status: str


class OrderPage(BaseModel):
    data: list[OrderOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last")


class _SchemaOnce(BaseModel):
    """flask-openapi3 reads a header or query model's JSON schema on every request it validates
    (``_validate_header``, ``_validate_query``); pydantic would rebuild it each time. The plain call is
    answered from a per-class copy made once (read-only: callers only look names up in it)."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if args or kwargs:  # the OpenAPI document's generation: as pydantic builds it
            return super().model_json_schema(*args, **kwargs)
        schema = _SCHEMAS.get(cls)
        if schema is None:
            schema = _SCHEMAS[cls] = super().model_json_schema()
        return schema


_SCHEMAS: dict[type[BaseModel], dict[str, Any]] = {}


class OrderQuery(_SchemaOnce):
    """Filters of ``GET /orders``; newest first. An unknown (misspelt) filter is a 422, not ignored."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId | None = None
    status: OrderStatus | None = None
    created_gte: Annotated[Instant | None, Field(description="Created at or after (RFC 3339)")] = None
    created_lt: Annotated[Instant | None, Field(description="Created before (RFC 3339)")] = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[
        str | None, Field(max_length=CURSOR_MAX_LENGTH, description="`next_cursor` of the previous page")
    ] = None


class OrderPath(BaseModel):
    order_id: str


class IdempotencyHeader(_SchemaOnce):
    idempotency_key: Annotated[
        str | None,
        Field(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Same key and body again: the first response (keys expire; 24 h by default)",
        ),
    ] = None


class FieldError(BaseModel):
    """One invalid input: ``pointer`` into the JSON body, or the ``parameter`` / ``header`` name."""

    detail: str
    code: str
    pointer: str | None = None
    parameter: str | None = None
    header: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` lists the invalid fields of a 422."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
