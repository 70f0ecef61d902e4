"""Placing orders over HTTP the way a client would."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from harness.processes import TEST_API_KEY


def order_body(rng: random.Random | None = None) -> dict[str, Any]:
    rng = rng or random.Random()
    lines = [
        {
            "sku": f"SKU-{rng.randint(1, 500)}",
            "quantity": rng.randint(1, 5),
            "unit_amount": rng.randint(0, 50_000),
        }
        for _ in range(rng.randint(1, 4))
    ]
    return {"customer_id": f"cus_{rng.randint(1, 1000)}", "currency": "EUR", "lines": lines}


def expected_total(body: dict[str, Any]) -> int:
    return sum(line["quantity"] * line["unit_amount"] for line in body["lines"])


def api_headers(key: str = TEST_API_KEY) -> dict[str, str]:
    """What every client request carries: the API key and a fresh idempotency key."""
    return {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}


def post_orders(base_url: str, bodies: list[dict[str, Any]], concurrency: int = 16) -> list[dict[str, Any]]:
    """POST every body concurrently; fail on any status other than 201."""
    with httpx.Client(base_url=base_url, timeout=30) as client:

        def post(body: dict[str, Any]) -> dict[str, Any]:
            response = client.post("/orders", json=body, headers=api_headers())
            assert response.status_code == 201, response.text
            created: dict[str, Any] = response.json()
            return created

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(post, bodies))
