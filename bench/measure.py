"""Reading what the pipeline did from the invoices database, and sampling the processes' memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil
from sqlalchemy import Engine, create_engine, make_url, text

from bench.stats import rates_by_part, summarize

__all__ = [
    "Delivery",
    "InvoiceProbe",
    "RoundTripProbe",
    "cpu_by_pid",
    "cpu_used",
    "postgres_backends",
    "publish_rate",
    "rss_mb",
    "settle",
    "stages",
]


@dataclass(frozen=True)
class Delivery:
    """Invoices of one run (orders tagged by customer prefix): how many, when, how late (epoch seconds)."""

    count: int
    first_placed: float
    first_created: float
    last_created: float
    latencies_ms: list[float]
    created: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Orders/s from the first order written to the last invoice written."""
        span = self.last_created - self.first_placed
        return self.count / span if span > 0 else 0.0

    def sustained(self, start: float = 0.2, end: float = 0.8) -> float:
        """Invoices/s over a steady window: the middle of first order → last invoice (ramp and tail cut)."""
        span = self.last_created - self.first_placed
        if span <= 0:
            return 0.0
        low, high = self.first_placed + start * span, self.first_placed + end * span
        return sum(low <= c < high for c in self.created) / (high - low)

    def rates_by_part(self, parts: int) -> list[float]:
        """Invoices/s in each of ``parts`` consecutive equal shares of the invoices: steady, or slowing?"""
        return rates_by_part(self.created, parts)


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
            return Delivery(0, 0.0, 0.0, 0.0, [])
        created = [float(r.created) for r in rows]
        return Delivery(
            len(rows),
            first_placed=min(float(r.placed) for r in rows),
            first_created=min(created),
            last_created=max(created),
            latencies_ms=[float(r.latency) for r in rows],
            created=created,
        )

    def close(self) -> None:
        self._engine.dispose()


class RoundTripProbe:
    """The product's answer coming home: orders turned ``invoiced`` and their outbox rows acknowledged."""

    def __init__(self, orders_url: str) -> None:
        self._engine: Engine = create_engine(orders_url, pool_size=1, max_overflow=0)

    def count(self, tag: str) -> int:
        query = text(
            "SELECT count(*) FROM orders o JOIN outbox x ON x.aggregate_id = o.id::text"
            " WHERE o.customer_id LIKE :tag AND o.status = 'invoiced' AND x.acknowledged_at IS NOT NULL"
        )
        with self._engine.connect() as conn:
            return int(conn.scalar(query, {"tag": f"{tag}%"}) or 0)

    def wait_for(self, tag: str, expected: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        count = self.count(tag)
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.count(tag)
        return count

    def last_acknowledged(self, tag: str) -> float:
        """Epoch seconds of the last acknowledgement (the database's clock, the consumer's commit)."""
        query = text(
            "SELECT extract(epoch FROM max(x.acknowledged_at)) FROM orders o"
            " JOIN outbox x ON x.aggregate_id = o.id::text WHERE o.customer_id LIKE :tag"
        )
        with self._engine.connect() as conn:
            return float(conn.scalar(query, {"tag": f"{tag}%"}) or 0.0)

    def close(self) -> None:
        self._engine.dispose()


def stages(orders_url: str, invoices_url: str, tag: str) -> dict[str, float]:
    """Where the product's order→invoice time goes, per order: written → published (the order's commit,
    the relay's wake-up, claim and publish) and published → invoice written (broker, worker, its commit).

    ``placed_at`` is the API's clock, ``published_at`` and the invoice's ``created_at`` the database's: one
    machine here, so one clock. Percentiles of each stage on its own (they do not add up to the total's).
    """
    placed = text(
        "SELECT o.id::text AS order_id, extract(epoch FROM o.created_at) AS placed,"
        " extract(epoch FROM x.published_at) AS published FROM orders o"
        " JOIN outbox x ON x.aggregate_id = o.id::text AND x.topic = 'order.placed'"
        " WHERE o.customer_id LIKE :tag"
    )
    invoiced = text(
        "SELECT order_id, extract(epoch FROM created_at) FROM invoices WHERE customer_id LIKE :tag"
    )
    engines = [create_engine(url, pool_size=1, max_overflow=0) for url in (orders_url, invoices_url)]
    try:
        with engines[0].connect() as conn:
            rows = conn.execute(placed, {"tag": f"{tag}%"}).all()
        with engines[1].connect() as conn:
            created = {order_id: float(at) for order_id, at in conn.execute(invoiced, {"tag": f"{tag}%"})}
    finally:
        for engine in engines:
            engine.dispose()
    done = [row for row in rows if row.order_id in created and row.published is not None]
    publish = summarize([1000 * (float(row.published) - float(row.placed)) for row in done])
    work = summarize([1000 * (created[row.order_id] - float(row.published)) for row in done])
    return {
        **{f"to_published_{key}": value for key, value in publish.items()},
        **{f"to_invoice_{key}": value for key, value in work.items()},
    }


def publish_rate(orders_url: str) -> float:
    """Messages/s the relay published, first publish to last (the outbox keeps ``published_at``)."""
    engine = create_engine(orders_url, pool_size=1, max_overflow=0)
    query = text(
        "SELECT count(*) AS n, extract(epoch FROM max(published_at) - min(published_at)) AS span"
        " FROM outbox WHERE published_at IS NOT NULL"
    )
    try:
        with engine.connect() as conn:
            row = conn.execute(query).one()
    finally:
        engine.dispose()
    return row.n / float(row.span) if row.span else 0.0


def rss_mb(processes: list[psutil.Process]) -> float:
    """Resident memory of a process tree in MiB (0 when it is gone)."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds each process has used so far (so a delta survives new children)."""
    used: dict[int, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        used[process.pid] = times.user + times.system
    return used


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def settle(urls: list[str]) -> float:
    """VACUUM ANALYZE these databases now; return the seconds it took.

    A round's inserts set off autovacuum on its tables some time after the round ends (the launcher
    visits each database once per ``autovacuum_naptime``): left to it, that work lands in the *next*
    variant's round and tilts the pair. Done here, after the CPU snapshot, it is charged to no one.
    """
    started = time.monotonic()
    for url in urls:
        engine = create_engine(url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("VACUUM (ANALYZE)"))
        finally:
            engine.dispose()
    return time.monotonic() - started


def postgres_backends(urls: list[str]) -> list[psutil.Process]:
    """The server processes serving these databases (same machine): their CPU is the database's share."""
    url = make_url(urls[0])
    names = [make_url(u).database for u in urls]
    engine = create_engine(url.set(database="postgres"), pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            query = text("SELECT pid FROM pg_stat_activity WHERE datname = ANY(:names)")
            pids = list(conn.scalars(query, {"names": names}))
    finally:
        engine.dispose()
    backends = []
    for pid in pids:
        try:
            backends.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return backends
