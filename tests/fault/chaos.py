"""The chaos soak: ``python -m tests.fault.chaos --orders 500 [--seed 7]`` (``make chaos N=…``).

A concurrent client posts N orders through a real gunicorn API while a seeded driver SIGKILLs and
restarts the relays and the workers at random intervals and kills its private Redis once (run as
compose runs it: ``appendfsync always``). Then it waits, bounded, for the pipeline to drain and
prints what the checker found. Exit status 1 if anything was lost or doubled, or nothing drained.

While draining it also runs the reconciliation an operator schedules in production (every
``RECONCILE_EVERY`` s, for messages published over ``RECONCILE_AFTER`` s ago and never confirmed):
kombu's Redis transport pops a message (BRPOP) before recording it as unacked, so a consumer that
loses its connection at that instant loses the message at the broker. The count is printed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine

from invoice_worker.database import InvoiceDatabase
from invoice_worker.dead_letters import confirmed_message_ids
from order_service.models import outbox
from order_service.reconcile import republish_unconfirmed
from shared.config import Settings
from shared.db import utcnow
from tests.fault.checker import Verdict
from tests.fault.harness import Cluster
from tests.support.databases import PostgresFactory
from tests.support.orders import order_body
from tests.support.servers import PrivateRedis

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RECONCILE_EVERY = 10.0
RECONCILE_AFTER = 30.0
CHAOS_ENV = {"BROKER_VISIBILITY_TIMEOUT": "6", "WORKER_MAX_DELIVERIES": "10"}
"""Workers are SIGKILLed on purpose, so allow more deliveries before calling a message poison."""


@dataclass
class Result:
    verdict: Verdict
    seed: int
    wall_time: float
    drained: bool
    faults: dict[str, int] = field(default_factory=dict)
    republished: int = 0

    @property
    def ok(self) -> bool:
        return self.drained and not self.verdict.lost and not self.verdict.doubled

    def lines(self) -> list[str]:
        v = self.verdict
        return [
            f"seed: {self.seed}",
            f"orders: {len(v.orders)}",
            f"invoices: {sum(v.invoices.values())}",
            f"lost: {len(v.lost)}",
            f"doubled: {len(v.doubled)}",
            f"redeliveries: {v.redeliveries}",
            f"dead letters: {v.dead_letters}",
            f"republished by reconciliation: {self.republished}",
            f"faults injected: {', '.join(f'{k}={n}' for k, n in sorted(self.faults.items()))}",
            f"drained: {self.drained}",
            f"wall time: {self.wall_time:.1f} s",
        ]


def _post_all(cluster: Cluster, bodies: list[dict[str, Any]], concurrency: int, accepted: list[int]) -> None:
    """Each order is retried with its own Idempotency-Key until accepted (bounded), as a client would."""
    with httpx.Client(base_url=cluster.base_url, timeout=30) as client:

        def post(body: dict[str, Any]) -> None:
            key = str(uuid.uuid4())
            for _ in range(20):
                try:
                    headers = {"Authorization": f"Bearer {cluster.api_key}", "Idempotency-Key": key}
                    response = client.post("/orders", json=body, headers=headers)
                except httpx.TransportError:
                    time.sleep(0.5)
                    continue
                if response.status_code == 201:
                    accepted.append(1)
                    return
                if response.status_code not in (429, 503):
                    raise AssertionError(f"order refused: {response.status_code} {response.text}")
                time.sleep(0.5)
            raise AssertionError("order not accepted after 20 attempts")

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(post, bodies))


class Driver:
    """Kills and restarts relays and workers at seeded random intervals until told to stop."""

    def __init__(self, cluster: Cluster, rng: random.Random, posted: Callable[[], float]) -> None:
        self.cluster = cluster
        self.rng = rng
        self.posted = posted
        self.faults: dict[str, int] = {}
        self.relays = [cluster.start_relay(f"relay-{n}") for n in range(2)]
        self.workers = [cluster.start_worker(f"worker-{n}", concurrency=2) for n in range(2)]
        self.redis_restarted = False
        self.stop = threading.Event()

    def _count(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    def restart_redis(self) -> None:
        """SIGKILL, then start on the same files: only the append-only file carries the queue over."""
        self.cluster.redis.kill()
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.redis.start()
        self.redis_restarted = True
        self._count("redis_kill")

    def _step(self) -> None:
        if not self.redis_restarted and self.posted() >= 0.4:
            self.restart_redis()
            return
        if self.rng.random() < 0.5:
            index = self.rng.randrange(len(self.relays))
            self.relays[index].kill()
            self.relays[index] = self.cluster.start_relay(f"relay-{index}")
            self._count("relay_kill")
        else:
            index = self.rng.randrange(len(self.workers))
            self.workers[index].kill()
            self.workers[index] = self.cluster.start_worker(f"worker-{index}", concurrency=2, ready=False)
            self._count("worker_kill")

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.5, 3.0)):
            self._step()


def reconcile(cluster: Cluster, older_than: float) -> int:
    """``invoice_worker confirmed | order_service.reconcile``, in-process."""
    invoices = InvoiceDatabase(Settings(invoices_database_url=cluster.databases.invoices_url))
    now = utcnow()
    try:
        confirmed = set(confirmed_message_ids(invoices, now - timedelta(hours=1)))
    finally:
        invoices.engine.dispose()
    engine = create_engine(cluster.databases.orders_url)
    try:
        with engine.begin() as conn:
            window = {
                "published_after": now - timedelta(hours=1),
                "published_before": now - timedelta(seconds=older_than),
            }
            return len(republish_unconfirmed(conn, outbox, confirmed, **window))
    finally:
        engine.dispose()


def run_chaos(
    factory: PostgresFactory,
    root: Path,
    orders: int,
    seed: int,
    concurrency: int = 8,
    drain_timeout: float = 0,
) -> Result:
    rng = random.Random(seed)
    bodies = [order_body(rng) for _ in range(orders)]
    redis = PrivateRedis(root / "redis", persistent=True).start()
    cluster = Cluster(root=root, redis=redis, databases=factory.fresh_pair(), overrides=CHAOS_ENV)
    started = time.monotonic()
    try:
        cluster.start_api(workers=2)
        accepted: list[int] = []
        driver = Driver(cluster, rng, lambda: len(accepted) / orders)
        chaos = threading.Thread(target=driver.run, name="chaos-driver")
        chaos.start()
        try:
            _post_all(cluster, bodies, concurrency, accepted)
        finally:
            driver.stop.set()
            chaos.join(120)
        if not driver.redis_restarted:
            driver.restart_redis()
        for index, worker in enumerate(driver.workers):
            if not worker.running:
                driver.workers[index] = cluster.start_worker(f"worker-{index}", concurrency=2, ready=False)
        deadline = time.monotonic() + (drain_timeout or 120 + orders / 20)
        settled, republished, next_reconcile = None, 0, time.monotonic() + RECONCILE_EVERY
        while settled is None and time.monotonic() < deadline:
            time.sleep(1)
            settled = cluster.checker.settled(orders)
            if settled is None and time.monotonic() >= next_reconcile:
                republished += reconcile(cluster, RECONCILE_AFTER)
                next_reconcile = time.monotonic() + RECONCILE_EVERY
        verdict = settled or cluster.checker.verdict()
        if verdict.lost:
            print(f"lost orders: {sorted(verdict.lost)[:20]} (logs in {cluster.log_dir})", file=sys.stderr)
        elapsed = time.monotonic() - started
        return Result(verdict, seed, elapsed, settled is not None, driver.faults, republished)
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault.chaos", description=__doc__)
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random, printed)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    factory = PostgresFactory(args.postgres_url)
    try:
        with tempfile.TemporaryDirectory(prefix="chaos-") as root:
            result = run_chaos(factory, Path(root), args.orders, seed, args.concurrency)
    finally:
        factory.close()
    print("\n".join(result.lines()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
