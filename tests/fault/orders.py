"""Orders for fault tests: bodies, and placing them without an HTTP server where HTTP is not the point."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.processes import TEST_SIGNING_KEY
from order_service import create_app
from order_service.extensions import db
from shared.config import Settings
from tests.fault.harness import Cluster, order_headers
from tests.support.orders import order_body


def bodies(count: int, seed: int, customer_id: str | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    made = [order_body(rng) for _ in range(count)]
    if customer_id is not None:
        for body in made:
            body["customer_id"] = customer_id
    return made


def cluster_settings(cluster: Cluster) -> Settings:
    """The settings the cluster's processes run with, for in-process use by a test."""
    return Settings(
        orders_database_url=cluster.databases.orders_url,
        invoices_database_url=cluster.databases.invoices_url,
        broker_url=cluster.redis.url,
        queue_prefix=cluster.queue_prefix,
        api_keys=cluster.api_key,
        message_signing_key=TEST_SIGNING_KEY,
        rate_limit="1000000 per minute",
        var_dir=cluster.root / "var",
    )


def place_in_process(cluster: Cluster, orders: Iterable[dict[str, Any]]) -> list[str]:
    """The order service's own code path (Flask test client): a committed order and its outbox row,
    which the relay publishes (the API never talks to the broker)."""
    app = create_app(cluster_settings(cluster))
    ids = []
    try:
        client = app.test_client()
        for body in orders:
            response = client.post("/orders", json=body, headers=order_headers(cluster.api_key))
            assert response.status_code == 201, response.get_data(as_text=True)
            ids.append(response.get_json()["id"])
    finally:
        with app.app_context():
            db.engine.dispose()
    return ids


@dataclass
class OrderFlow:
    """Orders posted through the API at a steady pace from a thread; when each was accepted."""

    cluster: Cluster
    per_second: float
    count: int
    seed: int
    accepted: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> OrderFlow:
        self.thread = threading.Thread(target=self._post, name="orders", daemon=True)
        self.thread.start()
        return self

    def _post(self) -> None:
        with httpx.Client(base_url=self.cluster.base_url, timeout=30) as client:
            for body in bodies(self.count, seed=self.seed):
                if self.stop.wait(1 / self.per_second):
                    return
                try:
                    response = self.cluster.post_order(client, body)
                except httpx.HTTPError as error:
                    self.refused.append(repr(error))
                    continue
                if response.status_code == 201:
                    self.accepted[response.json()["id"]] = time.monotonic()
                else:
                    self.refused.append(f"{response.status_code} {response.text[:200]}")

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)


@dataclass
class InvoicedSeen:
    """When each order was first seen ``invoiced`` (polled: an upper bound within one poll)."""

    cluster: Cluster
    seen: dict[str, float] = field(default_factory=dict)

    def poll(self) -> int:
        _, invoiced = self.cluster.checker.invoiced_orders()
        now = time.monotonic()
        for order_id in invoiced:
            self.seen.setdefault(order_id, now)
        return len(self.seen)

    def all_invoiced_by(self, flow: OrderFlow, deadline: float) -> float | None:
        """When the last order ``flow`` placed was seen ``invoiced`` (``None``: not by ``deadline``)."""
        while time.monotonic() < deadline:
            self.poll()
            if set(flow.accepted) <= set(self.seen):
                return max(self.seen[order_id] for order_id in flow.accepted)
            time.sleep(0.5)
        return None
