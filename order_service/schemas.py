"""The HTTP contract of the order API: request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from order_service.models import Order

__all__ = ["OrderIn", "OrderLineIn", "OrderLineOut", "OrderOut", "OrderPage"]

MAX_UNIT_AMOUNT = 100_000_000_00
"""Bounded so that 100 lines x 10 000 units still fits comfortably in a BIGINT."""


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["BOOK-1"])]
    quantity: Annotated[StrictInt, Field(ge=1, le=10_000)]
    unit_amount: Annotated[
        StrictInt, Field(ge=0, le=MAX_UNIT_AMOUNT, description="In the currency's minor unit")
    ]


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[str, Field(min_length=1, max_length=64, examples=["cus_42"])]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code", examples=["EUR"])]
    lines: Annotated[list[OrderLineIn], Field(min_length=1, max_length=100)]


class OrderLineOut(BaseModel):
    sku: str
    quantity: int
    unit_amount: int
    amount_total: int


class OrderOut(BaseModel):
    id: str
    status: Literal["placed"]
    customer_id: str
    currency: str
    amount_total: int
    lines: list[OrderLineOut]
    created_at: datetime

    @classmethod
    def of(cls, order: Order) -> OrderOut:
        return cls(
            id=str(order.id),
            status="placed",
            customer_id=order.customer_id,
            currency=order.currency,
            amount_total=order.amount_total,
            lines=[
                OrderLineOut(
                    sku=line.sku,
                    quantity=line.quantity,
                    unit_amount=line.unit_amount,
                    amount_total=line.amount_total,
                )
                for line in order.lines
            ],
            created_at=order.created_at,
        )


class OrderPage(BaseModel):
    data: list[OrderOut]
    next_cursor: str | None
