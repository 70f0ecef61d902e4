"""The processes a benchmark runs: the product's whole loop, or the naive baseline.

The product: gunicorn (``order_service.wsgi``), the order relay, the invoice worker, the invoice relay
and the order consumer. The naive baseline (``bench.naive_app`` / ``bench.naive_worker``): gunicorn
and one Celery worker. Both run with the same gunicorn workers/threads and Celery concurrency.

Each stack gets its own throwaway databases (the product's cloned from migrated templates, the naive
one's made empty and given its tables) and its own queue prefix on the broker (Redis, or a RabbitMQ
vhost of the bench's own: ``bench.rabbitmq``), so a bench never touches anyone else's data on shared
servers; everything is dropped at the end.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from sqlalchemy import create_engine, text

from harness.databases import DatabasePair, PostgresFactory
from harness.processes import BIN, Service, free_port, pipeline_env, wait_for_http

__all__ = ["API_KEY", "Knobs", "Stack", "StackFactory", "store_api_key"]

API_KEY = os.environ.get("BENCH_API_KEY") or f"osk_bench_{secrets.token_hex(16)}"
"""The Bearer token the load generator sends: stored in the product's ``api_keys`` table (as
``flask api-keys create`` would), so every request takes the stored-key path, not ``API_KEYS``."""


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Knobs:
    """The tuning the bench runs with (every one an environment variable, recorded in the results)."""

    gunicorn_workers: int = field(default_factory=lambda: _env_int("BENCH_GUNICORN_WORKERS", 2))
    gunicorn_threads: int = field(default_factory=lambda: _env_int("BENCH_GUNICORN_THREADS", 4))
    worker_concurrency: int = field(default_factory=lambda: _env_int("BENCH_WORKER_CONCURRENCY", 2))
    worker_prefetch: int = field(default_factory=lambda: _env_int("BENCH_WORKER_PREFETCH", 1))
    relay_batch_size: int = field(default_factory=lambda: _env_int("BENCH_RELAY_BATCH_SIZE", 500))
    log_level: str = field(default_factory=lambda: os.environ.get("BENCH_LOG_LEVEL", "INFO"))


@dataclass
class Stack:
    """One variant's processes on its own databases and queue."""

    name: str
    databases: DatabasePair
    env: dict[str, str]
    log_dir: Path
    knobs: Knobs
    services: dict[str, Service] = field(default_factory=dict)
    base_url: str = ""

    @property
    def queue(self) -> str:
        return f"{self.env['QUEUE_PREFIX']}invoices"

    def start_api(self, app: str) -> Stack:
        port = free_port()
        command = [
            str(BIN / "gunicorn"), app, "--bind", f"127.0.0.1:{port}",
            "--workers", str(self.knobs.gunicorn_workers), "--threads", str(self.knobs.gunicorn_threads),
            "--backlog", "2048", "--keep-alive", "30", "--no-control-socket",
        ]  # fmt: skip
        self.services["api"] = Service("api", command, self.env, self.log_dir / "api.log").start()
        self.base_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{self.base_url}/readyz", timeout=60)
        return self

    def start_relay(self, name: str = "relay", module: str = "order_service.relay") -> Stack:
        command = [sys.executable, "-m", module]
        self.services[name] = Service(name, command, self.env, self.log_dir / f"{name}.log").start()
        return self

    def start_worker(
        self, app: str = "invoice_worker", name: str = "worker", queue: str = "invoices"
    ) -> Stack:
        command = [
            str(BIN / "celery"), "-A", app, "worker", "-Q", f"{self.env['QUEUE_PREFIX']}{queue}",
            "--concurrency", str(self.knobs.worker_concurrency),
            "--prefetch-multiplier", str(self.knobs.worker_prefetch),
            "--loglevel", self.knobs.log_level,
            "--hostname", f"bench-{self.name}-{name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        worker = Service(name, command, self.env, self.log_dir / f"{name}.log").start()
        self.services[name] = worker
        worker.wait_for_log("ready", timeout=90)
        return self

    def start_product(self) -> Stack:
        """The whole loop: API, order relay, invoice worker, invoice relay, order consumer."""
        store_api_key(self.databases.orders_url, API_KEY)
        self.start_api("order_service.wsgi:app").start_relay().start_worker()
        self.start_relay("invoice_relay", "invoice_worker.relay")
        return self.start_worker("order_service.worker", name="consumer", queue="orders")

    def start_naive(self) -> Stack:
        """The naive baseline: its gunicorn app and its Celery worker."""
        self.start_api("bench.naive_app:app")
        return self.start_worker("bench.naive_worker")

    def stop(self, *names: str) -> None:
        for name in names or list(self.services):
            service = self.services.pop(name, None)
            if service is not None:
                service.stop()

    def processes(self, name: str) -> list[psutil.Process]:
        """The service's process and its children (gunicorn and Celery fork their workers)."""
        service = self.services.get(name)
        if service is None or service.process is None or not service.running:
            return []
        try:
            root = psutil.Process(service.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@dataclass
class StackFactory:
    """Makes stacks and cleans up after all of them: databases dropped, queues deleted, processes stopped."""

    admin_url: str
    broker_url: str
    """``redis://…`` (keys deleted by prefix at the end), or ``amqp://…`` on a vhost its owner deletes."""
    root: Path
    knobs: Knobs = field(default_factory=Knobs)
    extra_env: dict[str, str] = field(default_factory=dict)
    _postgres: PostgresFactory = field(init=False)
    _stacks: list[Stack] = field(default_factory=list)
    _prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._postgres = PostgresFactory(self.admin_url, run_id=f"bench{uuid.uuid4().hex[:6]}")

    def databases(self) -> DatabasePair:
        return self._postgres.fresh_pair()

    def naive_databases(self) -> DatabasePair:
        """Two empty databases with the naive baseline's tables (no migrations, as such an app has)."""
        from bench.naive_app import create_tables as orders_tables
        from bench.naive_worker import create_tables as invoices_tables

        pair = DatabasePair(self._postgres.empty("naive_orders"), self._postgres.empty("naive_invoices"))
        orders_tables(pair.orders_url)
        invoices_tables(pair.invoices_url)
        return pair

    def stack(self, name: str, databases: DatabasePair | None = None) -> Stack:
        databases = databases or self.databases()
        prefix = f"bench-{uuid.uuid4().hex[:8]}-"
        self._prefixes.append(prefix)
        log_dir = self.root / f"{name}-{len(self._stacks)}"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = pipeline_env(
            orders_url=databases.orders_url,
            invoices_url=databases.invoices_url,
            broker_url=self.broker_url,
            var_dir=log_dir / "var",
            queue_prefix=prefix,
        )
        env.update(
            API_KEYS="",
            NAIVE_ORDERS_DATABASE_URL=databases.orders_url,
            NAIVE_INVOICES_DATABASE_URL=databases.invoices_url,
            METRICS_PORT="0",
            BENCH_API_KEY=API_KEY,
            LOG_LEVEL=self.knobs.log_level,
            API_POOL_SIZE=str(self.knobs.gunicorn_threads),
            RELAY_BATCH_SIZE=str(self.knobs.relay_batch_size),
            # On, and far above the load: the limiter's cost, never its 429s (counted in Redis on Redis,
            # in each process on RabbitMQ: ``Settings.rate_limit_storage``).
            RATE_LIMIT=os.environ.get("BENCH_RATE_LIMIT", "1000000 per second"),
            **self.extra_env,
        )
        stack = Stack(name, databases, env, log_dir, self.knobs)
        self._stacks.append(stack)
        return stack

    def close(self) -> None:
        for stack in self._stacks:
            stack.stop()
        self._postgres.close()
        if not self.broker_url.startswith("redis"):
            return
        client = redis.Redis.from_url(self.broker_url)
        try:
            for prefix in self._prefixes:
                keys: Iterator[bytes] = client.scan_iter(match=f"{prefix}*", count=1000)
                batch = list(keys)
                if batch:
                    client.delete(*batch)
        finally:
            client.close()


def store_api_key(orders_url: str, key: str, name: str = "bench") -> None:
    """Store ``key``'s digest in the product's ``api_keys`` table, as ``flask api-keys create`` does."""
    engine = create_engine(orders_url, pool_size=1, max_overflow=0)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_keys (name, key_hash, created_at) VALUES (:name, :hash, now())"
                    " ON CONFLICT (name) DO NOTHING"
                ),
                {"name": name, "hash": hashlib.sha256(key.encode()).hexdigest()},
            )
    finally:
        engine.dispose()
