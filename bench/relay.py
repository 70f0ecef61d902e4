"""``make bench-relay``: drain 100 000 outbox rows four ways on real Postgres and Redis.

(a) naive: one ``send_task`` and one UPDATE+COMMIT per row (in this process, for comparison only);
(b) the product relay, one process; (c) two processes; (d) the raw floor: claim + pipelined LPUSH
of the same bytes + mark, no Celery. Every variant drains its own clone of one prefilled
database (its rows not yet due, so relays start idle; a single UPDATE makes them due), onto its
own queue prefix. Then commit→publish latency with NOTIFY while the relay is idle.
Writes bench/results/relay.json. Not a test: nothing here asserts a time.

Backlogs (bench/results/relay_backlogs.json): 200 000 outbox rows of one order each, drained by
the product relay in this process (``OutboxRelay.relay_batch`` until a batch is empty, as
``relay --once`` does): *fresh* (as written), *after_outage* (every row failed before: attempts > 0,
due again) and *one_parked* (the first row parked). Each round drains the three from clones of one
template and reports msg/s and each rate against fresh in that round; the figure is the median of
the rounds. ``BENCH_RELAY_PARTS=backlogs`` (or ``variants``) runs one part only.

Smoke run: ``BENCH_QUICK=1`` (10 000 rows, one 20 000-row backlog round, written to ``relay-quick.json``
and ``relay_backlogs-quick.json``: never the committed files). On RabbitMQ: ``bench.relay_rabbitmq``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

import psutil
import psycopg
import redis
from flask_outbox.broker import publishing_app
from flask_outbox.db import create_db_engine, utcnow
from flask_outbox.logs import configure_logging
from flask_outbox.messages import PendingMessage
from flask_outbox.redis_publisher import RedisPipelinePublisher
from flask_outbox.signing import MessageSigner
from flask_outbox.writer import OutboxMessage, add_message
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session

from bench.backlog import fill_outbox
from bench.provenance import machine, source
from harness.databases import PostgresFactory
from harness.outbox import aggregate, order_id_for, order_payload, outbox_rows, queued_messages
from harness.processes import TEST_SIGNING_KEY, pipeline_env, relay_service
from harness.waiting import wait_until
from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings
from shared.contracts import ROUTES

QUICK = bool(os.environ.get("BENCH_QUICK"))
ROWS = int(os.environ.get("BENCH_RELAY_ROWS", "10000" if QUICK else "100000"))
NAIVE_ROWS = ROWS
"""The naive relay drains the same rows as the others: one table, one load."""
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RESULTS = Path(__file__).parent / "results" / ("relay-quick.json" if QUICK else "relay.json")
LOGS = Path(__file__).parent / "results" / "relay-logs"
ROUTE = ROUTES["order.placed"]
PARTS = set(os.environ.get("BENCH_RELAY_PARTS", "variants,backlogs").split(","))
BACKLOG_ROWS = int(os.environ.get("BENCH_RELAY_BACKLOG_ROWS", "20000" if QUICK else "200000"))
BACKLOG_ROUNDS = int(os.environ.get("BENCH_RELAY_BACKLOG_ROUNDS", "1" if QUICK else "3"))
BACKLOG_RESULTS = (
    Path(__file__).parent / "results" / ("relay_backlogs-quick.json" if QUICK else "relay_backlogs.json")
)
_PROVENANCE: dict[str, object] = {}
BACKLOGS = {
    "fresh": (),
    "after_outage": (
        "UPDATE outbox SET attempts = 1 + id % 5, last_error = 'ConnectionError: Error 111 connecting'",
    ),
    "one_parked": (
        "UPDATE outbox SET attempts = 20, parked_at = now(), last_error = 'no route'"
        " WHERE id = (SELECT min(id) FROM outbox)",
    ),
}
"""SQL that turns the template's fresh backlog into each kind (then VACUUM ANALYZE, as for all)."""


@dataclass
class Result:
    variant: str
    messages: int
    seconds: float
    cpu_seconds: float
    rss_start_mb: float
    rss_peak_mb: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_10k(self) -> float:
        return self.cpu_seconds / self.messages * 10_000


class Sampler:
    """Peak RSS and CPU of some processes while a drain runs (sampled every 50 ms)."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.rss_start = sum(p.memory_info().rss for p in self.procs) / 2**20
        self.peak = self.rss_start
        self.cpu_start = sum(sum(p.cpu_times()[:2]) for p in self.procs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, sum(p.memory_info().rss for p in self.procs) / 2**20)

    def finish(self) -> tuple[float, float, float]:
        cpu = sum(sum(p.cpu_times()[:2]) for p in self.procs) - self.cpu_start
        self._stop.set()
        self._thread.join()
        return cpu, self.rss_start, self.peak


class Databases:
    """One prefilled template, cloned per variant; everything made here is dropped at the end."""

    def __init__(self, count: int = ROWS) -> None:
        self.factory = PostgresFactory(POSTGRES_URL, run_id=f"bench_{uuid.uuid4().hex[:6]}")
        self.admin = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        self.template = self.factory.fresh_pair().orders_url
        engine = create_db_engine(self.template)
        later = utcnow() + timedelta(days=1)
        rows = [{**row, "available_at": later} for row in outbox_rows(count, count // 4)]
        with engine.begin() as conn:
            for start in range(0, count, 5_000):
                conn.execute(outbox.insert(), rows[start : start + 5_000])
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE outbox"))
        engine.dispose()

    def clone(self) -> str:
        name = f"{make_url(self.template).database}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(self.template).database}"')
        self.factory._made.append(name)
        return make_url(self.template).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        self.factory.close()


def release(engine: Engine) -> None:
    """Make every row due at once (with fresh statistics, as autovacuum would give) and wake relays."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET available_at = now()"))
        conn.execute(text("ANALYZE outbox"))
        conn.execute(text("SELECT pg_notify('outbox', '')"))


def drained(engine: Engine) -> Callable[[], bool]:
    """Every row marked published (its message, alone or in a batch task, is in the queue by then)."""

    def done() -> bool:
        with engine.connect() as conn:
            return not conn.scalar(text("SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)"))

    return done


def naive(url: str, client: redis.Redis, prefix: str) -> Result:
    """What a first relay looks like: one send_task and one commit per row."""
    settings = Settings(orders_database_url=url, broker_url=REDIS_URL, queue_prefix=prefix)
    app = publishing_app(settings, "naive")
    engine = create_db_engine(url)
    release(engine)
    sampler, started = Sampler([os.getpid()]), time.perf_counter()
    sent = 0
    with engine.connect() as conn, app.producer_or_acquire() as producer:
        while sent < NAIVE_ROWS:
            rows = conn.execute(
                text(
                    "SELECT id, message_id, payload, headers FROM outbox"
                    " WHERE published_at IS NULL ORDER BY id LIMIT 500"
                )
            ).all()
            conn.commit()
            for row in rows[: NAIVE_ROWS - sent]:
                app.send_task(
                    ROUTE.task, kwargs={"payload": row.payload}, task_id=str(row.message_id),
                    queue=prefix + ROUTE.queue, headers=row.headers, producer=producer, retry=False,
                )  # fmt: skip
                conn.execute(text("UPDATE outbox SET published_at = now() WHERE id = :id"), {"id": row.id})
                conn.commit()
                sent += 1
    seconds = time.perf_counter() - started
    engine.dispose()
    app.close()
    return Result("a naive send_task + commit per row", sent, seconds, *sampler.finish())


def floor(url: str, client: redis.Redis, prefix: str) -> Result:
    """Claim + pipelined LPUSH of same-size bytes + mark: no Celery, no per-message encoding."""
    settings = Settings(broker_url=REDIS_URL, queue_prefix=prefix, message_signing_key=TEST_SIGNING_KEY)
    sample = PendingMessage(
        0, uuid.uuid4(), "order.placed", aggregate(0), order_payload(aggregate(0)), {"x": 1}, 0
    )
    signer = MessageSigner.from_settings(settings)
    publisher = RedisPipelinePublisher.from_url(
        publishing_app(settings, "floor"), REDIS_URL, ROUTES, signer, prefix
    )
    queue, data = publisher.encode(sample, ROUTE)
    publisher.close()
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    engine = create_db_engine(url)
    release(engine)
    engine.dispose()
    sampler, started = Sampler([os.getpid()]), time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        while True:
            rows = conn.execute(
                "SELECT id, message_id, payload, headers FROM outbox WHERE published_at IS NULL"
                " AND parked_at IS NULL AND available_at <= now()"
                " ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED"
            ).fetchall()
            if not rows:
                conn.commit()
                break
            with client.pipeline(transaction=False) as pipe:
                pipe.lpush(queue, *[data for _ in rows])
                pipe.execute()
            conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)", ([r[0] for r in rows],))
            conn.commit()
    seconds = time.perf_counter() - started
    return Result("d raw floor (claim + LPUSH + mark)", ROWS, seconds, *sampler.finish())


def product(url: str, client: redis.Redis, prefix: str, processes: int, tag: str) -> Result:
    """The real ``python -m order_service.relay`` processes, measured from release to drained."""
    LOGS.mkdir(parents=True, exist_ok=True)
    env = pipeline_env(
        orders_url=url, invoices_url=url, broker_url=REDIS_URL, var_dir=LOGS / "var", queue_prefix=prefix,
        LOG_LEVEL="WARNING", RELAY_POLL_INTERVAL="1.0",
    )  # fmt: skip
    relays = [relay_service(env, LOGS, name=f"{tag}-{n}").start() for n in range(processes)]
    engine = create_db_engine(url)
    try:
        wait_until(lambda: balanced(engine, processes), timeout=60, message="relays to share the partitions")
        time.sleep(1.0)  # let imports and connections settle before the CPU baseline
        sampler = Sampler([r.process.pid for r in relays if r.process])
        release(engine)
        started = time.perf_counter()
        wait_until(drained(engine), timeout=600, interval=0.01, message="drain")
        seconds = time.perf_counter() - started
        result = Result(f"{tag} product relay, {processes} process(es)", ROWS, seconds, *sampler.finish())
    finally:
        for relay in relays:
            relay.signal_group(signal.SIGTERM)
        for relay in relays:
            relay.stop()
        engine.dispose()
    return result


def balanced(engine: Engine, processes: int) -> bool:
    with engine.connect() as conn:
        held = conn.execute(
            text(
                "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " GROUP BY pid"
            )
        ).all()
    return len(held) == processes and sum(count for _, count in held) == 16


def latency(url: str, client: redis.Redis, prefix: str, samples: int = 60) -> dict[str, float]:
    """Commit one outbox row (with its NOTIFY) while the relay idles on LISTEN; time until it is in Redis."""
    env = pipeline_env(
        orders_url=url, invoices_url=url, broker_url=REDIS_URL, var_dir=LOGS / "var", queue_prefix=prefix,
        LOG_LEVEL="WARNING", RELAY_POLL_INTERVAL="5.0",
    )  # fmt: skip
    relay = relay_service(env, LOGS, name="latency").start()
    engine = create_db_engine(url)
    queue = prefix + ROUTE.queue
    timings = []
    try:
        wait_until(lambda: balanced(engine, 1), timeout=60, message="the relay to hold its partitions")
        for n in range(samples):
            time.sleep(0.05)
            with Session(engine) as session, session.begin():
                order_id = order_id_for(f"lat-{n}")
                message = OutboxMessage("order.placed", "order", order_id, order_payload(order_id))
                add_message(session, outbox, message)
                started = time.perf_counter()
            client.brpop([queue], timeout=10)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        relay.stop()
        engine.dispose()
    ordered = sorted(timings)
    return {
        "samples": len(timings),
        "p50_ms": statistics.median(ordered),
        "p95_ms": ordered[int(len(ordered) * 0.95) - 1],
        "poll_interval_ms": 5000.0,
    }


class BacklogTemplate:
    """One database holding the fresh backlog; each drain runs on its own clone, dropped after."""

    def __init__(self) -> None:
        self.factory = PostgresFactory(POSTGRES_URL, run_id=f"bench_{uuid.uuid4().hex[:6]}")
        self.admin = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        self.url = self.factory.fresh_pair().orders_url
        fill_outbox(self.url, BACKLOG_ROWS, "bench-backlog-")

    def clone(self, sql: tuple[str, ...]) -> str:
        template = make_url(self.url).database
        name = f"{template}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            # FILE_COPY: a copy that is not WAL-logged (PG 15's default is), so no checkpoint of a
            # few hundred MB of WAL lands in the middle of the drain that follows.
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        self.factory._made.append(name)
        url = make_url(self.url).set(database=name).render_as_string(hide_password=False)
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for statement in sql:
                conn.execute(statement)
            conn.execute("VACUUM ANALYZE outbox")
            conn.execute("CHECKPOINT")  # every drain starts with nothing dirty to write back
        return url

    def drop(self, url: str) -> None:
        name = str(make_url(url).database)
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.factory._made.remove(name)

    def close(self) -> None:
        self.factory.close()


@dataclass
class Drain:
    backlog: str
    messages: int
    seconds: float
    batches: int
    first_tenth_batch_ms: float
    last_tenth_batch_ms: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def drain_backlog(url: str, client: redis.Redis, prefix: str, backlog: str) -> Drain:
    """The product relay (its claim, pipelined publisher and mark), batch after batch until empty."""
    settings = Settings(
        orders_database_url=url,
        broker_url=REDIS_URL,
        queue_prefix=prefix,
        message_signing_key=TEST_SIGNING_KEY,
    )
    engine = create_db_engine(url, pool_size=2)
    relay = build_relay(settings, engine)
    timings: list[float] = []
    published = 0
    try:
        relay.rebalance(force=True)  # takes every partition: the only relay
        started = time.perf_counter()
        while True:
            batch_started = time.perf_counter()
            count = len(relay.relay_batch().published)
            if not count:
                break
            timings.append(time.perf_counter() - batch_started)
            published += count
        seconds = time.perf_counter() - started
    finally:
        relay.disconnect()
        relay.publisher.close()
        engine.dispose()
    queued = queued_messages(client, prefix + ROUTE.queue)
    assert queued == published, f"{backlog}: {queued} messages queued for {published} published"
    tenth = max(1, len(timings) // 10)
    return Drain(
        backlog, published, seconds, len(timings),
        statistics.median(timings[:tenth]) * 1000, statistics.median(timings[-tenth:]) * 1000,
    )  # fmt: skip


def backlogs(client: redis.Redis, prefix: Callable[[], str]) -> dict[str, object]:
    """Fresh, after-outage and one-parked backlogs, drained in each round; ratios within a round."""
    print(f"backlogs: {BACKLOG_ROWS:,} rows, {BACKLOG_ROUNDS} round(s)", flush=True)
    template = BacklogTemplate()
    rounds: list[dict[str, Drain]] = []
    try:
        for number in range(1, BACKLOG_ROUNDS + 1):
            drains: dict[str, Drain] = {}
            for backlog, sql in BACKLOGS.items():
                url = template.clone(sql)
                queue_prefix = prefix()
                try:
                    drains[backlog] = drain_backlog(url, client, queue_prefix, backlog)
                finally:
                    client.delete(queue_prefix + ROUTE.queue)
                    template.drop(url)
                drain = drains[backlog]
                print(
                    f"  round {number} {backlog:13} {drain.rate:>9,.0f} msg/s"
                    f"  x{drain.rate / drains['fresh'].rate:.2f} of fresh"
                    f"  batch {drain.first_tenth_batch_ms:.1f} ms in the first tenth,"
                    f" {drain.last_tenth_batch_ms:.1f} ms in the last",
                    flush=True,
                )
            rounds.append(drains)
    finally:
        template.close()
    ratios = {
        backlog: statistics.median(r[backlog].rate / r["fresh"].rate for r in rounds) for backlog in BACKLOGS
    }
    return {
        "rows": BACKLOG_ROWS,
        "rounds": BACKLOG_ROUNDS,
        "cpus": os.cpu_count(),
        "relay": "in-process OutboxRelay.relay_batch until empty (as relay --once), Redis pipeline",
        "backlogs": {b: list(sql) for b, sql in BACKLOGS.items()},
        "median_rate": {b: statistics.median(r[b].rate for r in rounds) for b in BACKLOGS},
        "ratio_vs_fresh": ratios,
        "target_ratio": 0.8,
        "per_round": [{b: {**asdict(d), "rate": d.rate} for b, d in r.items()} for r in rounds],
    }


def variants(client: redis.Redis, prefix: Callable[[], str]) -> None:
    """Variants a-d on 100 000 rows and the idle latency; writes bench/results/relay.json."""
    databases = Databases()

    def finish(variant: str, result: Result, queue_prefix: str) -> Result:
        count = queued_messages(client, queue_prefix + ROUTE.queue)
        assert count == result.messages, f"{variant}: {count} messages for {result.messages} rows"
        client.delete(queue_prefix + ROUTE.queue)
        print(f"  {result.variant}: {result.rate:,.0f} msg/s", flush=True)
        return result

    try:
        results = {}
        print(f"relay bench: {ROWS:,} rows per variant", flush=True)
        for key, run in {
            "a": lambda url, p: naive(url, client, p),
            "b": lambda url, p: product(url, client, p, 1, "b"),
            "c": lambda url, p: product(url, client, p, 2, "c"),
            "d": lambda url, p: floor(url, client, p),
        }.items():
            queue_prefix = prefix()
            results[key] = finish(key, run(databases.clone(), queue_prefix), queue_prefix)
        lat = latency(databases.factory.fresh_pair().orders_url, client, prefix())  # idle: an empty outbox
    finally:
        databases.close()

    ratios = {"b/a": results["b"].rate / results["a"].rate, "b/d": results["b"].rate / results["d"].rate}
    print()
    print(f"{'variant':44} {'msg/s':>9} {'CPU s/10k':>10} {'RSS start MB':>13} {'RSS peak MB':>12}")
    for result in results.values():
        print(
            f"{result.variant:44} {result.rate:>9,.0f} {result.cpu_per_10k:>10.2f}"
            f" {result.rss_start_mb:>13.1f} {result.rss_peak_mb:>12.1f}"
        )
    print(f"\nratios: b/a = {ratios['b/a']:.1f}x (target >= 5), b/d = {ratios['b/d']:.2f} (target >= 0.4)")
    print(
        f"commit->publish latency, NOTIFY, idle relay: p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                **provenance(),
                "rows": ROWS,
                "cpus": os.cpu_count(),
                "variants": {
                    k: {**asdict(r), "rate": r.rate, "cpu_s_per_10k": r.cpu_per_10k}
                    for k, r in results.items()
                },
                "ratios": ratios,
                "latency": lat,
            },
            indent=2,
        )
    )
    print(f"written: {RESULTS}")


def provenance() -> dict[str, object]:
    """The commit and machine of this run, and the load as a results file is written."""
    return {**_PROVENANCE, "load_average_after": os.getloadavg()}


def main() -> int:
    _PROVENANCE.update(
        source=source(), machine=machine(POSTGRES_URL, REDIS_URL)
    )  # before anything is written
    configure_logging("WARNING")  # the in-process relay logs every batch at INFO
    client = redis.Redis.from_url(REDIS_URL)
    prefixes: list[str] = []

    def prefix() -> str:
        prefixes.append(f"bench-relay-{uuid.uuid4().hex[:8]}-")
        return prefixes[-1]

    try:
        if "variants" in PARTS:
            variants(client, prefix)
        if "backlogs" in PARTS:
            figures = backlogs(client, prefix)
            ratios = cast(dict[str, float], figures["ratio_vs_fresh"])
            print(
                "\nbacklogs vs fresh (median of rounds): "
                + ", ".join(f"{b} x{r:.2f}" for b, r in ratios.items())
                + " (target >= 0.8)"
            )
            BACKLOG_RESULTS.parent.mkdir(parents=True, exist_ok=True)
            BACKLOG_RESULTS.write_text(json.dumps({**provenance(), **figures}, indent=2))
            print(f"written: {BACKLOG_RESULTS}")
    finally:
        for used in prefixes:
            keys = list(client.scan_iter(match=f"{used}*"))
            if keys:
                client.delete(*keys)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
