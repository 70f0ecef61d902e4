"""Reading outcomes from both databases: the checker every pipeline test ends with."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import create_engine, text


@dataclass(frozen=True)
class Ledger:
    """What the two databases say: orders (id → total) and invoices (order id → totals)."""

    orders: dict[str, int]
    invoices: dict[str, list[int]]
    unpublished: int

    @property
    def lost(self) -> set[str]:
        """Committed orders with no invoice."""
        return set(self.orders) - set(self.invoices)

    @property
    def doubled(self) -> set[str]:
        """More than one invoice for an order, or an invoice for no order."""
        return {o for o, totals in self.invoices.items() if len(totals) > 1 or o not in self.orders}

    @property
    def wrong_totals(self) -> set[str]:
        return {o for o, totals in self.invoices.items() if o in self.orders and totals != [self.orders[o]]}


def read_ledger(orders_url: str, invoices_url: str) -> Ledger:
    orders_engine, invoices_engine = create_engine(orders_url), create_engine(invoices_url)
    try:
        with orders_engine.connect() as conn:
            rows = conn.execute(text("SELECT id, amount_total FROM orders"))
            orders = {str(uuid.UUID(str(r.id))): r.amount_total for r in rows}  # SQLite keeps bare hex
            unpublished = conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) or 0
        invoices: dict[str, list[int]] = {}
        with invoices_engine.connect() as conn:
            for row in conn.execute(text("SELECT order_id, amount_total FROM invoices")):
                invoices.setdefault(row.order_id, []).append(row.amount_total)
    finally:
        orders_engine.dispose()
        invoices_engine.dispose()
    return Ledger(orders, invoices, unpublished)
