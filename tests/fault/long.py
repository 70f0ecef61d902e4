"""The long fault tier: ``python -m tests.fault.long`` (``make faults-long``), faults at their real size.

Each scenario starts its own loop (a gunicorn API, two order relays, two invoice workers, two invoice
relays, an order consumer) on a private Redis and fresh databases, with the **shipped defaults**:
the only override is the per-client rate limit, as in the soak. Orders flow (two a second) before,
during and after the fault; a scenario then waits until every accepted order is ``invoiced`` with
exactly one invoice, and reports how long after the end of its last fault that took. The bound is
the project's 120 s (``LATENESS_BOUND_SECONDS``). ``make test`` keeps short versions of the same
mechanisms; this tier proves them at the sizes production has: minutes, not seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from flask_outbox.settings import LATENESS_BOUND_SECONDS
from sqlalchemy import create_engine, text

from harness.databases import PostgresFactory
from harness.processes import invoice_relay_service, relay_service
from tests.fault.harness import Cluster
from tests.fault.orders import OrderFlow
from tests.support.read_only import set_read_only
from tests.support.servers import PrivateRedis

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LONG_ENV = {"RATE_LIMIT": "1000000 per minute"}
"""The soak's only override: one client posts for everyone here."""
ORDERS_PER_SECOND = 2.0
WAIT_AFTER_FAULT = LATENESS_BOUND_SECONDS + 120
"""How long a scenario waits for the last order after its last fault before it gives up (and fails)."""


@dataclass(frozen=True)
class Outcome:
    scenario: str
    fault: str
    accepted: int
    refused: int
    lost: int
    doubled: int
    late_s: float | None
    """Seconds from the end of the last fault until every accepted order was ``invoiced``."""

    @property
    def ok(self) -> bool:
        on_time = self.late_s is not None and self.late_s <= LATENESS_BOUND_SECONDS
        return on_time and self.lost == self.doubled == self.refused == 0

    def line(self) -> str:
        late = "never" if self.late_s is None else f"{self.late_s:.1f} s"
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"{verdict:6} {self.scenario:28} {self.fault}: accepted {self.accepted}, refused {self.refused}, "
            f"lost {self.lost}, doubled {self.doubled}; all invoiced {late} after the last fault "
            f"(bound {LATENESS_BOUND_SECONDS:.0f} s)"
        )


def _invoiced(cluster: Cluster, accepted: list[str]) -> tuple[int, int, int]:
    """(invoiced, lost, doubled) among ``accepted``: ``invoiced`` status and exactly one invoice each."""
    wanted = set(accepted)
    orders = create_engine(cluster.databases.orders_url)
    invoices = create_engine(cluster.databases.invoices_url)
    try:
        with orders.connect() as conn:
            done = {str(i) for i in conn.scalars(text("SELECT id FROM orders WHERE status = 'invoiced'"))}
        with invoices.connect() as conn:
            query = text("SELECT order_id, count(*) FROM invoices GROUP BY order_id")
            counts = {str(order_id): int(count) for order_id, count in conn.execute(query)}
    finally:
        orders.dispose()
        invoices.dispose()
    doubled = sum(1 for order_id, count in counts.items() if count > 1 or order_id not in wanted)
    return len(done & wanted), len(wanted - set(counts)), doubled


def _flow(cluster: Cluster) -> OrderFlow:
    """Orders at a steady pace for the whole scenario (far more bodies than its minutes need)."""
    return OrderFlow(cluster, ORDERS_PER_SECOND, count=5_000, seed=int(time.time())).start()


def _full_loop(cluster: Cluster, relays: int = 2) -> None:
    cluster.start_api(workers=2)
    for index in range(1, relays + 1):
        cluster.start_relay(f"relay-{index}")
        cluster.start_invoice_relay(f"invoice-relay-{index}")
    for index in (1, 2):
        cluster.start_worker(f"worker-{index}")
    cluster.start_order_consumer()


def _settle(cluster: Cluster, flow: OrderFlow, scenario: str, fault: str, fault_ended: float) -> Outcome:
    time.sleep(10)  # orders keep coming after the fault too
    flow.finish()
    late: float | None = None
    deadline = fault_ended + WAIT_AFTER_FAULT
    while time.monotonic() < deadline:
        invoiced, _, _ = _invoiced(cluster, list(flow.accepted))
        if invoiced == len(flow.accepted):
            late = time.monotonic() - fault_ended
            break
        time.sleep(0.5)
    _, lost, doubled = _invoiced(cluster, list(flow.accepted))
    return Outcome(scenario, fault, len(flow.accepted), len(flow.refused), lost, doubled, late)


def redis_restart_keeping_data(cluster: Cluster) -> Outcome:
    """Redis stopped for 3 minutes (a maintenance restart) and started again with its data."""
    _full_loop(cluster)
    flow = _flow(cluster)
    time.sleep(20)
    cluster.redis.stop()
    time.sleep(180)
    cluster.redis.start()
    return _settle(
        cluster, flow, "redis-restart-kept", "Redis down 180 s, back with its data", time.monotonic()
    )


def redis_back_empty(cluster: Cluster) -> Outcome:
    """Redis killed, down for 3 minutes, back without the tasks it held (no persistence)."""
    _full_loop(cluster)
    flow = _flow(cluster)
    time.sleep(20)
    cluster.redis.kill()
    time.sleep(180)
    cluster.redis.start()
    return _settle(cluster, flow, "redis-back-empty", "Redis down 180 s, back empty", time.monotonic())


def workers_down_then_broker_loss(cluster: Cluster) -> Outcome:
    """Both invoice workers stopped for 4 minutes while orders queue up, then the broker loses it all."""
    _full_loop(cluster)
    flow = _flow(cluster)
    time.sleep(20)
    workers = [service for service in cluster.services if service.name.startswith("worker-")]
    for worker in workers:
        worker.stop()
    time.sleep(240)
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        client.flushall()
    finally:
        client.close()
    for worker in workers:
        worker.start()
    fault = "invoice workers down 240 s, then FLUSHALL"
    return _settle(cluster, flow, "workers-down-then-loss", fault, time.monotonic())


def relay_cut_off_from_redis(cluster: Cluster) -> Outcome:
    """Two relays of each kind, one of them with a broker that never answers (a wrong route), 3 minutes."""
    _full_loop(cluster, relays=1)
    broken = {**cluster.env, "BROKER_URL": "redis://127.0.0.1:9/0"}  # discard port: nothing listens
    for service in (
        relay_service(broken, cluster.log_dir, name="relay-cut-off"),
        invoice_relay_service(broken, cluster.log_dir, name="invoice-relay-cut-off"),
    ):
        cluster.services.append(service.start())
    flow = _flow(cluster)
    time.sleep(180)
    fault = "one of two order relays and of two invoice relays cut off from Redis, 180 s of orders"
    return _settle(cluster, flow, "relay-cut-off", fault, time.monotonic())


def invoice_database_read_only(cluster: Cluster) -> Outcome:
    """The invoices database read-only for 2 minutes, as after a failover onto a replica."""
    _full_loop(cluster)
    flow = _flow(cluster)
    time.sleep(20)
    set_read_only(cluster.databases.invoices_url, True)
    time.sleep(120)
    set_read_only(cluster.databases.invoices_url, False)
    fault = "invoices database read-only 120 s"
    return _settle(cluster, flow, "invoice-db-read-only", fault, time.monotonic())


def redis_refusing_writes(cluster: Cluster) -> Outcome:
    """Redis up but refusing every write for 3 minutes (``NOREPLICAS``: a replica not yet promoted, a
    full disk and an out-of-memory broker answer the same way): error replies, not a lost connection."""
    _full_loop(cluster)
    flow = _flow(cluster)
    time.sleep(20)
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        client.config_set("min-replicas-to-write", 1)
        time.sleep(180)
        client.config_set("min-replicas-to-write", 0)
    finally:
        client.close()
    fault = "Redis refusing writes 180 s"
    return _settle(cluster, flow, "redis-refuses-writes", fault, time.monotonic())


SCENARIOS: dict[str, tuple[Callable[[Cluster], Outcome], bool]] = {
    "redis-restart-kept": (redis_restart_keeping_data, True),
    "redis-back-empty": (redis_back_empty, False),
    "workers-down-then-loss": (workers_down_then_broker_loss, True),
    "relay-cut-off": (relay_cut_off_from_redis, True),
    "invoice-db-read-only": (invoice_database_read_only, True),
    "redis-refuses-writes": (redis_refusing_writes, True),
}
"""Name -> (scenario, whether its Redis keeps its data as compose runs it)."""


def run(factory: PostgresFactory, root: Path, name: str) -> Outcome:
    scenario, persistent = SCENARIOS[name]
    folder = root / name
    redis_server = PrivateRedis(folder / "redis", persistent=persistent).start()
    cluster = Cluster(
        root=folder,
        redis=redis_server,
        databases=factory.fresh_pair(),
        overrides=LONG_ENV,
        shipped_defaults=True,
    )
    try:
        outcome = scenario(cluster)
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.close()
    print(outcome.line(), flush=True)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault.long", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    parser.add_argument("--record", type=Path, help="also write the report here, with the commit it ran")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    names = args.scenarios or list(SCENARIOS)
    factory = PostgresFactory(args.postgres_url)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="faults-long-") as temporary:
            outcomes = [run(factory, Path(temporary), name) for name in names]
    finally:
        factory.close()
    report = "\n".join(outcome.line() for outcome in outcomes)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        header = f"{_provenance()}, {time.monotonic() - started:.0f} s in all"
        args.record.write_text(f"{header}\n{report}\n", encoding="utf-8")
    return 0 if all(outcome.ok for outcome in outcomes) else 1


def _provenance() -> str:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False)
    return (
        f"make faults-long: commit {commit.stdout.strip() or 'unknown'}"
        f"{' (dirty tree)' if dirty.stdout.strip() else ''}, {os.cpu_count()} cores, shipped defaults"
    )


if __name__ == "__main__":
    sys.exit(main())
