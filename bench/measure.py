"""Reading what the pipeline did from the invoices database, and sampling the processes' memory."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil
from sqlalchemy import Engine, create_engine, text

__all__ = ["Delivery", "InvoiceProbe", "rss_mb"]


@dataclass(frozen=True)
class Delivery:
    """Invoices of one run (orders tagged by customer prefix): how many, over what span, how late."""

    count: int
    span_seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.count / self.span_seconds if self.span_seconds > 0 else 0.0


class InvoiceProbe:
    """Queries the invoices database; ``placed_at`` is the order's insert time, ``created_at`` the invoice's.

    Their difference is order-written → invoice-written, measured on one clock (this machine's),
    so it is comparable across variants: it includes the order's commit, the publish and the task.
    """

    def __init__(self, invoices_url: str) -> None:
        self._engine: Engine = create_engine(invoices_url, pool_size=1, max_overflow=0)

    def count(self, tag: str) -> int:
        with self._engine.connect() as conn:
            query = text("SELECT count(*) FROM invoices WHERE customer_id LIKE :tag")
            return int(conn.scalar(query, {"tag": f"{tag}%"}) or 0)

    def wait_for(self, tag: str, expected: int, timeout: float) -> int:
        """Poll until ``expected`` invoices of the run exist, or ``timeout`` passes; return the count."""
        deadline = time.monotonic() + timeout
        count = self.count(tag)
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.count(tag)
        return count

    def delivery(self, tag: str) -> Delivery:
        query = text(
            "SELECT extract(epoch FROM created_at - placed_at) * 1000 AS latency,"
            " extract(epoch FROM placed_at) AS placed, extract(epoch FROM created_at) AS created"
            " FROM invoices WHERE customer_id LIKE :tag"
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query, {"tag": f"{tag}%"}).all()
        if not rows:
            return Delivery(0, 0.0, [])
        span = float(max(r.created for r in rows)) - float(min(r.placed for r in rows))
        return Delivery(len(rows), span, [float(r.latency) for r in rows])

    def close(self) -> None:
        self._engine.dispose()


def rss_mb(processes: list[psutil.Process]) -> float:
    """Resident memory of a process tree in MiB (0 when it is gone)."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20
