"""The Jepsen-style checker: what both databases say happened, whatever the processes claimed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import create_engine, text


@dataclass(frozen=True)
class Verdict:
    orders: set[str]
    invoices: dict[str, int]  # order id -> number of invoices
    unpublished: int
    dead_letters: int  # pending ones
    redeliveries: int  # deliveries beyond the first, summed over messages

    @property
    def lost(self) -> set[str]:
        """Committed orders with no invoice."""
        return self.orders - set(self.invoices)

    @property
    def doubled(self) -> set[str]:
        """Orders with more than one invoice, and invoices for no committed order."""
        return {o for o, n in self.invoices.items() if n > 1 or o not in self.orders}

    def summary(self) -> str:
        return (
            f"orders={len(self.orders)} invoices={sum(self.invoices.values())} lost={len(self.lost)} "
            f"doubled={len(self.doubled)} unpublished={self.unpublished} dead_letters={self.dead_letters} "
            f"redeliveries={self.redeliveries}"
        )


class Checker:
    """Reads both databases with engines of its own (so it can poll cheaply while faults happen)."""

    def __init__(self, orders_url: str, invoices_url: str) -> None:
        self._orders = create_engine(orders_url, pool_pre_ping=True, pool_size=1)
        self._invoices = create_engine(invoices_url, pool_pre_ping=True, pool_size=1)

    def verdict(self) -> Verdict:
        with self._orders.connect() as conn:
            orders = {str(i) for i in conn.scalars(text("SELECT id FROM orders"))}
            unpublished = conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) or 0
        with self._invoices.connect() as conn:
            counts = conn.execute(text("SELECT order_id, count(*) FROM invoices GROUP BY order_id"))
            invoices = {str(order_id): n for order_id, n in counts}
            dead = conn.scalar(text("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")) or 0
            again = conn.scalar(text("SELECT coalesce(sum(deliveries - 1), 0) FROM message_deliveries")) or 0
        return Verdict(orders, invoices, unpublished, dead, int(again))

    def settled(self, expected_orders: int | None = None) -> Verdict | None:
        """The verdict once every order is invoiced and nothing waits in the outbox, else ``None``."""
        verdict = self.verdict()
        if expected_orders is not None and len(verdict.orders) < expected_orders:
            return None
        if verdict.lost or verdict.unpublished:
            return None
        return verdict

    def close(self) -> None:
        self._orders.dispose()
        self._invoices.dispose()
