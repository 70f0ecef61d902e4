"""The chaos soak: ``python -m tests.fault.chaos --orders 500 [--seed 7]`` (``make chaos N=…``).

A concurrent client posts N orders through a real gunicorn API into the whole loop (order relays,
invoice workers, invoice relays, order consumers: two of each) while a seeded driver SIGKILLs
(process groups) and restarts any of them at random intervals, SIGKILLs its private Redis once
(run as compose runs it: append-only file, ``appendfsync always``) and makes the broker lose its
messages twice while orders flow: the queues and kombu's ``unacked`` record deleted, then
``FLUSHALL``. Every process runs the **shipped defaults** (no test-only visibility timeout, retry,
re-drive or delivery settings) and nothing repairs the loop from outside: no reconciliation runs;
what the broker lost comes back through the order relay's re-drive
(``OUTBOX_REDRIVE_AFTER_SECONDS``). Once the loop is quiescent (every order ``invoiced`` and
acknowledged, both outboxes published, both queues and ``unacked`` empty, two identical reads)
the checker (tests/fault/checker.py) reads the verdict: lost, doubled, totals, numbers, re-drives,
duplicates and lateness on the database clock.

``--broker rabbitmq`` runs the same loop on a private RabbitMQ node (quorum queues): the node is
SIGKILLed once and started again on its data, and the broker loses messages once: both queues
purged (AMQP ``queue.purge``, what ``rabbitmqctl purge_queue`` does: their ready messages; what
workers hold unacknowledged stays), repaired by the same re-drive. Redis's second loss
(``FLUSHALL``: kombu's bindings too) has no RabbitMQ counterpart here.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from harness.databases import PostgresFactory
from harness.processes import Service
from tests.fault.checker import Accepted, Findings, audit
from tests.fault.evidence import PRIORITY_SEPARATOR, PRIORITY_STEPS, InvoicedWatch, Snapshot
from tests.fault.harness import Broker, Cluster
from tests.support.orders import order_body
from tests.support.private_rabbit import PrivateRabbit
from tests.support.servers import PrivateRedis

BROKERS = ("redis", "rabbitmq")

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LATENESS_BOUND = 120.0
"""Every accepted order is invoiced within this many seconds of the last fault (issue 9)."""
DRAIN_TIMEOUT = LATENESS_BOUND + 60.0
"""How long to wait for quiescence after the last fault: the bound, plus time for the two reads.

With the defaults a SIGKILLed worker's reservations come back after the 60 s visibility timeout
plus at most one 10 s restore sweep, and a message the broker lost is re-driven 60 s after it was
published (plus at most one 5 s re-drive interval), so a healthy loop is quiet within the bound.
"""
SOAK_ENV = {"RATE_LIMIT": "1000000 per minute"}
"""The only setting the soak changes. The load generator is one client (one API key) posting as fast
as it can; the shipped 600 per minute is a per-client limit, so it would measure the limiter, not
the pipeline. Everything else is the shipped default (``Cluster(shipped_defaults=True)``)."""
REPLAYED_SHARE = 0.1
"""Share of orders the client posts again with the same key and body after its 201, as a client
that missed the response would: each key must keep naming one order."""


@dataclass
class Result:
    findings: Findings
    seed: int
    wall_time: float
    drain_time: float
    quiescent: Snapshot | None
    last_seen: Snapshot | None = None
    """The last read when the loop never went quiet: what was still in flight."""
    replayed: int = 0
    exits: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.quiescent is not None and self.findings.ok

    def lines(self) -> list[str]:
        rest = self.quiescent
        state = (
            f"yes (parked outbox rows {rest.parked_outbox}, pending dead letters {rest.dead_letters} "
            f"invoice side / {rest.order_dead_letters} order side, order.placed deliveries {rest.deliveries})"
            if rest
            else f"NO: not quiet within {DRAIN_TIMEOUT:.0f} s of the last fault; last read {self.last_seen}"
        )
        broker = [line for line in self.timeline if any(f" {kind}_" in line for kind in ("broker", *BROKERS))]
        return [
            f"seed: {self.seed}",
            f"faults injected: {', '.join(f'{k}={n}' for k, n in sorted(self.faults.items()))}",
            *(f"  {line}" for line in broker),
            f"processes that exited on their own (restarted): {len(self.exits)}"
            + (f" ({', '.join(self.exits)})" if self.exits else ""),
            f"requests replayed with the same Idempotency-Key: {self.replayed}",
            *self.findings.lines(),
            f"quiescent: {state}",
            f"drain after the last fault: {self.drain_time:.1f} s; wall time: {self.wall_time:.1f} s",
            *(["lost orders:", *self.diagnosis] if self.diagnosis else []),
            *(["faults (database clock):", *self.timeline] if not self.ok else []),
        ]


def soak_bodies(orders: int, seed: int) -> list[dict[str, Any]]:
    """Random bodies, each with a customer id of its own: a body then names exactly one order."""
    rng = random.Random(seed)
    bodies = [order_body(rng) for _ in range(orders)]
    for index, body in enumerate(bodies):
        body["customer_id"] = f"chaos-{seed}-{index:06d}"
    return bodies


class Client:
    """Posts each order with its own Idempotency-Key, retrying with that key until accepted."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.accepted: list[Accepted] = []
        self.replayed = 0

    def _post(self, client: httpx.Client, key: str, body: dict[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {self.cluster.api_key}", "Idempotency-Key": key}
        for _ in range(40):
            try:
                response = client.post("/orders", json=body, headers=headers)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code == 201:
                self.accepted.append(Accepted(key, str(uuid.UUID(response.json()["id"])), body))
                return
            if response.status_code not in (409, 429, 503):
                raise AssertionError(f"order refused: {response.status_code} {response.text}")
            time.sleep(0.5)
        raise AssertionError(f"order not accepted after 40 attempts (key {key})")

    def post_all(self, bodies: list[dict[str, Any]], concurrency: int) -> None:
        replays = {index for index in range(len(bodies)) if self.rng.random() < REPLAYED_SHARE}
        with httpx.Client(base_url=self.cluster.base_url, timeout=30) as client:

            def post(index: int) -> None:
                key = str(uuid.uuid4())
                self._post(client, key, bodies[index])
                if index in replays:
                    self._post(client, key, bodies[index])
                    self.replayed += 1

            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(post, range(len(bodies))))


BROKER_KEYS = ("unacked", "unacked_index")
"""kombu's record of delivered, unacknowledged messages (a hash and its sorted index by time)."""


@dataclass
class Group:
    """Processes of one kind: how to start one, and the running ones (index = name suffix)."""

    kind: str
    start: Callable[[str], Service]
    size: int
    running: list[Service] = field(default_factory=list)

    def name(self, index: int) -> str:
        return f"{self.kind}-{index}"

    def start_all(self) -> None:
        self.running = [self.start(self.name(n)) for n in range(self.size)]

    def restart(self, index: int) -> None:
        self.running[index] = self.start(self.name(index))

    def revive(self) -> list[str]:
        """Restart any that exited on their own, as compose's ``restart: unless-stopped`` would."""
        exited = []
        for index, service in enumerate(self.running):
            if not service.running:
                exited.append(f"{self.name(index)} (exit {service.process and service.process.returncode})")
                self.restart(index)
        return exited


class Driver:
    """SIGKILLs and restarts the loop's processes at seeded random intervals until told to stop.

    Each kind of process is killed at least once first, so that even a short run has every fault;
    Redis is SIGKILLed once (40 % of the orders in) and the broker loses its messages twice: the
    queues and kombu's ``unacked`` record deleted (55 %), then ``FLUSHALL`` (80 %).
    """

    def __init__(self, cluster: Cluster, rng: random.Random, posted: Callable[[], float]) -> None:
        self.cluster = cluster
        self.rng = rng
        self.posted = posted
        self.faults: dict[str, int] = {}
        self.timeline: list[str] = []
        self.last_fault_at: datetime | None = None
        self.groups = {
            "relay_kill": Group("relay", cluster.start_relay, 2),
            "worker_kill": Group(
                "worker", lambda name: cluster.start_worker(name, concurrency=2, ready=False), 2
            ),
            "invoice_relay_kill": Group("invoice-relay", cluster.start_invoice_relay, 2),
            "consumer_kill": Group(
                "order-consumer", lambda name: cluster.start_order_consumer(name, ready=False), 2
            ),
        }
        for group in self.groups.values():
            group.start_all()
        for kind in ("worker_kill", "consumer_kill"):
            for service in self.groups[kind].running:
                service.wait_for_log("ready", timeout=90)
        self.broker_faults: list[tuple[float, str, Callable[[], None]]] = (
            [(0.40, "rabbitmq_kill", self.restart_rabbit), (0.55, "broker_purge", self.purge_queues)]
            if isinstance(cluster.redis, PrivateRabbit)
            else [
                (0.40, "redis_kill", self.restart_redis),
                (0.55, "broker_loss", self.lose_queues),
                (0.80, "broker_flushall", self.flush_broker),
            ]
        )
        self.stop = threading.Event()
        self.lock = threading.Lock()
        """Held while a kill and its restart happen, so the supervisor never restarts a process twice."""
        self.exits: list[str] = []
        """Processes that exited without being killed by the driver (restarted by ``supervise``)."""

    def supervise(self, done: threading.Event) -> None:
        """Restart processes that exit on their own, every second, until ``done``."""
        while not done.wait(1.0):
            with self.lock:
                for group in self.groups.values():
                    self.exits.extend(group.revive())

    def _injected(self, fault: str, target: str = "") -> None:
        """Count the fault and note the time on the database server's clock."""
        self.faults[fault] = self.faults.get(fault, 0) + 1
        self.last_fault_at = self.cluster.checker.db_now()
        self.timeline.append(f"{self.last_fault_at:%H:%M:%S.%f} {fault} {target}")

    def restart_redis(self) -> None:
        """SIGKILL, then start on the same files: only the append-only file carries the queue over."""
        self.cluster.redis.kill()
        self._injected("redis_kill", "redis")
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.redis.start()

    def restart_rabbit(self) -> None:
        """SIGKILL the RabbitMQ node, then start it on its data: quorum queues keep what they confirmed."""
        self.cluster.redis.kill()
        self._injected("rabbitmq_kill", "rabbitmq")
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.redis.start()

    def purge_queues(self) -> None:
        """Purge both queues: their ready messages are gone, as orders flow."""
        assert isinstance(self.cluster.redis, PrivateRabbit)
        purged = self.cluster.redis.purge(self.cluster.queue, self.cluster.orders_queue)
        self._injected("broker_purge", f"queue.purge: {purged} ready messages purged")

    def _broker(self) -> redis.Redis:
        return redis.Redis.from_url(self.cluster.redis.url, socket_timeout=10)

    def lose_queues(self) -> None:
        """Delete both queues' contents and the unacknowledged record, atomically, as orders flow."""
        queues = [
            name
            for queue in (self.cluster.queue, self.cluster.orders_queue)
            for name in (queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS))
        ]
        client = self._broker()
        try:
            pipe = client.pipeline(transaction=True)
            for queue in queues:
                pipe.llen(queue)
            pipe.hlen(BROKER_KEYS[0])
            pipe.delete(*queues, *BROKER_KEYS)
            *queued, unacked, _deleted = pipe.execute()
        finally:
            client.close()
        self._injected("broker_loss", f"queues+unacked: {sum(queued)} queued, {unacked} unacked deleted")

    def flush_broker(self) -> None:
        """FLUSHALL the soak's private Redis: every message, the unacked record, kombu's bindings."""
        client = self._broker()
        try:
            pipe = client.pipeline(transaction=True)
            pipe.dbsize()
            pipe.flushall()
            keys, _ = pipe.execute()
        finally:
            client.close()
        self._injected("broker_flushall", f"FLUSHALL: {keys} keys")

    def _missing(self) -> list[str]:
        return [kind for kind in self.groups if kind not in self.faults]

    def _step(self) -> None:
        """One fault: a broker fault once its share of orders is in, else a kill (each kind once first)."""
        due = [f for f in self.broker_faults if self.posted() >= f[0]]
        missing = self._missing()
        if due and (not missing or self.rng.random() < 0.5):
            self.broker_faults.remove(due[0])
            due[0][2]()
            return
        kind = missing[0] if missing else self.rng.choice(sorted(self.groups))
        group = self.groups[kind]
        index = self.rng.randrange(group.size)
        group.running[index].kill()
        self._injected(kind, group.name(index))
        group.restart(index)

    def finish(self) -> None:
        """The faults a short run did not reach, at the same pace."""
        while self.broker_faults or self._missing():
            time.sleep(self.rng.uniform(0.3, 2.0))
            with self.lock:
                self._step()

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.3, 2.0)):
            with self.lock:
                self._step()


def run_chaos(
    factory: PostgresFactory,
    root: Path,
    orders: int,
    seed: int,
    concurrency: int = 8,
    drain_timeout: float = DRAIN_TIMEOUT,
    broker_kind: str = "redis",
) -> Result:
    rng = random.Random(seed)
    bodies = soak_bodies(orders, seed)
    broker: Broker = (
        PrivateRabbit(root / "rabbit").start()
        if broker_kind == "rabbitmq"
        else PrivateRedis(root / "redis", persistent=True).start()
    )
    cluster = Cluster(
        root=root, redis=broker, databases=factory.fresh_pair(), overrides=SOAK_ENV, shipped_defaults=True
    )
    started = time.monotonic()
    try:
        cluster.start_api(workers=2)
        client = Client(cluster, random.Random(rng.random()))
        driver = Driver(cluster, rng, lambda: len(client.accepted) / orders)
        watch = InvoicedWatch(cluster.checker).start()
        drained = threading.Event()
        supervisor = threading.Thread(target=driver.supervise, args=(drained,), name="chaos-supervisor")
        supervisor.start()
        chaos = threading.Thread(target=driver.run, name="chaos-driver")
        chaos.start()
        try:
            try:
                client.post_all(bodies, concurrency)
            finally:
                driver.stop.set()
                chaos.join(120)
            driver.finish()
            drain_started = time.monotonic()
            quiet = cluster.checker.wait_quiescent(timeout=drain_timeout)
            drain_time = time.monotonic() - drain_started
        finally:
            drained.set()
            supervisor.join(60)
        last_seen = cluster.checker.snapshot() if quiet is None else None
        watch.stop()
        evidence = cluster.checker.evidence(
            client.accepted, cluster.log_dir, driver.last_fault_at, watch.seen
        )
        findings = audit(evidence, LATENESS_BOUND)
        diagnosis = cluster.checker.diagnose(findings.lost)
        if findings.lost:
            diagnosis.append(f"  (logs in {cluster.log_dir})")
        elapsed = time.monotonic() - started
        return Result(
            findings,
            seed,
            elapsed,
            drain_time,
            quiet,
            last_seen=last_seen,
            replayed=client.replayed,
            exits=driver.exits,
            faults=driver.faults,
            timeline=driver.timeline,
            diagnosis=diagnosis,
        )
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.close()
        if isinstance(broker, PrivateRabbit):
            broker.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault.chaos", description=__doc__)
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random, printed)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--broker", choices=BROKERS, default="redis", help="the private broker's kind")
    parser.add_argument("--postgres-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs (printed path)")
    parser.add_argument("--record", type=Path, help="also write the report here, with the commit it ran")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    factory = PostgresFactory(args.postgres_url)
    try:
        if args.keep:
            root = Path(tempfile.mkdtemp(prefix="chaos-"))
            print(f"logs: {root / 'logs'}")
            result = run_chaos(factory, root, args.orders, seed, args.concurrency, broker_kind=args.broker)
        else:
            with tempfile.TemporaryDirectory(prefix="chaos-") as temporary:
                result = run_chaos(
                    factory, Path(temporary), args.orders, seed, args.concurrency, broker_kind=args.broker
                )
    finally:
        factory.close()
    report = "\n".join(result.lines())
    print(report)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(f"{_provenance(args.orders, args.broker)}\n{report}\n", encoding="utf-8")
    return 0 if result.ok else 1


def _provenance(orders: int, broker: str = "redis") -> str:
    """Which code ran, on what: a recorded figure names the commit it describes."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    on = f" BROKER={broker}" if broker != "redis" else ""
    return (
        f"make chaos N={orders}{on}: commit {commit.stdout.strip() or 'unknown'}"
        f"{' (dirty tree)' if dirty.stdout.strip() else ''}, {os.cpu_count()} cores, load average {load}"
    )


if __name__ == "__main__":
    sys.exit(main())
