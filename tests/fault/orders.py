"""Orders for fault tests: bodies, and placing them without an HTTP server where HTTP is not the point."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

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
