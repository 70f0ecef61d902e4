"""A private pipeline for one fault test: its own Redis, its databases, and real processes.

The fault tests and the chaos soak both drive a ``Cluster``: start and SIGKILL the processes of
the loop (order relay, invoice worker, invoice relay, order consumer) as subprocesses, restart
servers, and ask the checker what really happened.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from flask_outbox.settings import LATENESS_BOUND_SECONDS

from harness.databases import DatabasePair
from harness.processes import (
    TEST_SECRET_KEY,
    TEST_SIGNING_KEY,
    Service,
    api_service,
    free_port,
    invoice_relay_service,
    order_consumer_service,
    pipeline_env,
    relay_service,
    wait_for_http,
    worker_service,
)
from harness.waiting import wait_until
from shared.config import Settings
from tests.fault.evidence import Checker, Verdict
from tests.support.private_rabbit import PrivateRabbit

FAULT_ENV = {
    "BROKER_VISIBILITY_TIMEOUT": "4",
    "WORKER_MAX_DELIVERIES": "4",
    "WORKER_MAX_RETRIES": "40",
    "WORKER_RETRY_BACKOFF": "0.2",
    "WORKER_RETRY_BACKOFF_MAX": "1.5",
    "RELAY_MAX_BACKOFF": "1",
    "RELAY_POLL_INTERVAL": "0.2",
    "RATE_LIMIT": "1000000 per minute",
}
"""Short timeouts and backoffs, so that redelivery and recovery happen within a test's time."""

SETTINGS_ENV = frozenset(str(f.validation_alias) for f in Settings.model_fields.values())
"""Every variable ``Settings`` reads: a cluster on the shipped defaults inherits none of them."""


class Broker(Protocol):
    """The cluster's broker: ``PrivateRedis`` or ``PrivateRabbit`` (tests/support), private to the test."""

    @property
    def url(self) -> str: ...

    def start(self) -> object: ...

    def stop(self) -> None:
        """Graceful: what the broker keeps on disk survives (Redis's append-only file, quorum queues)."""

    def kill(self) -> None:
        """SIGKILL."""

    def restart(self) -> None: ...


def order_headers(api_key: str) -> dict[str, str]:
    """Every order request's headers, in one place: the API key and a fresh Idempotency-Key."""
    return {"Authorization": f"Bearer {api_key}", "Idempotency-Key": str(uuid.uuid4())}


@dataclass
class Cluster:
    root: Path
    redis: Broker
    """The broker, Redis or RabbitMQ (the name is older than the second broker)."""
    databases: DatabasePair
    overrides: dict[str, str] = field(default_factory=dict)
    shipped_defaults: bool = False
    """Run as an operator would: only URLs, prefixes, keys and ``overrides``; no ``FAULT_ENV``."""
    queue_prefix: str = field(default_factory=lambda: f"fault-{uuid.uuid4().hex[:8]}-")
    api_key: str = field(default_factory=lambda: f"osk_{secrets.token_urlsafe(24)}")
    services: list[Service] = field(default_factory=list)
    base_url: str = ""
    _checker: Checker | None = None

    @property
    def env(self) -> dict[str, str]:
        if self.shipped_defaults:
            inherited = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
            return {
                **inherited,
                "ORDERS_DATABASE_URL": self.databases.orders_url,
                "INVOICES_DATABASE_URL": self.databases.invoices_url,
                "BROKER_URL": self.redis.url,
                "QUEUE_PREFIX": self.queue_prefix,
                "VAR_DIR": str(self.root / "var"),
                "API_KEYS": self.api_key,
                "MESSAGE_SIGNING_KEY": TEST_SIGNING_KEY,
                "SECRET_KEY": TEST_SECRET_KEY,
                "LOG_FORMAT": "json",
                "METRICS_PORT": "0",  # a free port each: several processes share this host
                **self.overrides,
            }
        env = pipeline_env(
            orders_url=self.databases.orders_url,
            invoices_url=self.databases.invoices_url,
            broker_url=self.redis.url,
            var_dir=self.root / "var",
            queue_prefix=self.queue_prefix,
        )
        return {**env, **FAULT_ENV, "API_KEYS": self.api_key, **self.overrides}

    @property
    def queue(self) -> str:
        """Where ``order.placed`` goes: the invoice workers' queue."""
        return f"{self.queue_prefix}invoices"

    @property
    def orders_queue(self) -> str:
        """Where ``invoice.created`` goes: the order consumers' queue."""
        return f"{self.queue_prefix}orders"

    @property
    def log_dir(self) -> Path:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        return self.root / "logs"

    @property
    def checker(self) -> Checker:
        if self._checker is None:
            self._checker = Checker(
                self.databases.orders_url,
                self.databases.invoices_url,
                self.redis.url,
                (self.queue, self.orders_queue),
                counts=self.redis.counts if isinstance(self.redis, PrivateRabbit) else None,
            )
        return self._checker

    def _track(self, service: Service) -> Service:
        self.services.append(service)
        return service.start()

    def _env_on(self, metrics_port: int | None) -> dict[str, str]:
        """The environment, with this one process's metrics and probes on ``metrics_port`` if given."""
        return self.env if metrics_port is None else {**self.env, "METRICS_PORT": str(metrics_port)}

    def start_relay(self, name: str = "relay", metrics_port: int | None = None) -> Service:
        relay = self._track(relay_service(self._env_on(metrics_port), self.log_dir, name=name))
        relay.wait_for_log("relay.started")
        return relay

    def start_invoice_relay(self, name: str = "invoice-relay") -> Service:
        relay = self._track(invoice_relay_service(self.env, self.log_dir, name=name))
        relay.wait_for_log("relay.started")
        return relay

    def start_order_consumer(
        self, name: str = "order-consumer", concurrency: int = 2, ready: bool = True
    ) -> Service:
        consumer = self._track(
            order_consumer_service(self.env, self.log_dir, self.orders_queue, concurrency, name=name)
        )
        if ready:
            consumer.wait_for_log("ready", timeout=60)
        return consumer

    def start_worker(
        self,
        name: str = "worker",
        concurrency: int = 2,
        app: str = "invoice_worker",
        ready: bool = True,
        metrics_port: int | None = None,
    ) -> Service:
        env = self._env_on(metrics_port)
        worker = worker_service(env, self.log_dir, self.queue, concurrency=concurrency, name=name)
        worker.command[worker.command.index("invoice_worker")] = app
        self._track(worker)
        if ready:
            worker.wait_for_log("ready", timeout=60)
        return worker

    def start_api(self, workers: int = 2) -> str:
        port = free_port()
        self._track(api_service(self.env, self.log_dir, port, workers=workers))
        self.base_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{self.base_url}/healthz", timeout=60)
        return self.base_url

    def post_order(self, client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
        return client.post("/orders", json=body, headers=order_headers(self.api_key))

    def place_orders(self, bodies: Iterable[dict[str, Any]]) -> list[str]:
        """POST each order through the running API; every one must be accepted."""
        ids = []
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            for body in bodies:
                response = self.post_order(client, body)
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
        return ids

    def wait_settled(self, expected_orders: int | None = None, timeout: float = 90) -> Verdict:
        verdict = wait_until(
            lambda: self.checker.settled(expected_orders),
            timeout=timeout,
            interval=0.5,
            message=f"pipeline to settle ({self.checker.verdict().summary()})",
        )
        assert verdict is not None
        return verdict

    def settled_after(self, fault_ended: float, expected_orders: int, fault: str) -> float:
        """Seconds from ``fault_ended`` (monotonic) until every order was invoiced once, within the lateness
        bound; the checker's counts are printed with it (``fault``, all invoiced … s after)."""
        verdict = self.wait_settled(expected_orders, timeout=LATENESS_BOUND_SECONDS)
        lateness = time.monotonic() - fault_ended
        report(f"{fault}, all invoiced {lateness:.1f} s after", verdict)
        assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
        return lateness

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ({s.log_path})\n{s.logs()[-4000:]}" for s in self.services)

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop(timeout=10)
        if self._checker is not None:
            self._checker.close()
        self.redis.stop()


def report(label: str, verdict: Verdict) -> None:
    """The checker's counts, printed in every fault test's output."""
    print(f"[{label}] {verdict.summary()}", flush=True)
    if os.environ.get("FAULT_VERBOSE"):
        print(f"[{label}] lost={sorted(verdict.lost)} doubled={sorted(verdict.doubled)}")
