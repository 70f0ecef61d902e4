"""Load test for a running stack: ``make load HOST=http://127.0.0.1:8000`` (headless, prints a summary).

Clients place realistic orders with an ``Idempotency-Key``; a few retry the same key and body (as a
client does after a timeout) and must get the same order back; some read their order and page the list.
The API key comes from ``LOAD_API_KEY`` (or ``API_KEYS``' first key, as the stack was started with).
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

from locust import FastHttpUser, between, task

from bench.orders import order_body

API_KEY = os.environ.get("LOAD_API_KEY") or os.environ.get("API_KEYS", "").split(",")[0]


class OrderingClient(FastHttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.placed: list[str] = []
        self.auth = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}

    def _place(self, body: dict[str, Any], key: str, name: str) -> str | None:
        headers = {**self.auth, "Idempotency-Key": key}
        with self.client.post(
            "/orders", json=body, headers=headers, name=name, catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return None
            order_id: str = response.json()["id"]
            return order_id

    @task(10)
    def place_order(self) -> None:
        order_id = self._place(order_body(self.rng, "load-"), str(uuid.uuid4()), "POST /orders")
        if order_id:
            self.placed = [*self.placed[-49:], order_id]

    @task(1)
    def retry_with_same_key(self) -> None:
        body, key = order_body(self.rng, "load-"), str(uuid.uuid4())
        first = self._place(body, key, "POST /orders")
        again = self._place(body, key, "POST /orders (retry)")
        if first and again and first != again:
            self.environment.events.request.fire(
                request_type="CHECK",
                name="idempotent retry",
                response_time=0,
                response_length=0,
                exception=AssertionError(f"retry made a second order: {first} then {again}"),
            )

    @task(3)
    def read_order(self) -> None:
        if self.placed:
            order_id = self.rng.choice(self.placed)
            self.client.get(f"/orders/{order_id}", headers=self.auth, name="GET /orders/<id>")

    @task(1)
    def list_orders(self) -> None:
        self.client.get("/orders?limit=20", headers=self.auth, name="GET /orders")
