"""Realistic order bodies, shared by the load generator, the backlog fill and the locust file."""

from __future__ import annotations

import random
from typing import Any

__all__ = ["order_body"]

_SKUS = [f"{kind}-{n}" for kind in ("BOOK", "MUG", "TEE", "PEN") for n in range(1, 60)]
_CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")


def order_body(rng: random.Random, tag: str) -> dict[str, Any]:
    """A plausible order: 1-4 lines, small quantities, prices in cents; ``tag`` prefixes the customer."""
    lines = [
        {"sku": rng.choice(_SKUS), "quantity": rng.randint(1, 3), "unit_amount": rng.randint(199, 9_999)}
        for _ in range(rng.choice((1, 1, 2, 2, 3, 4)))
    ]
    return {
        "customer_id": f"{tag}{rng.randint(1, 5_000)}",
        "currency": rng.choice(_CURRENCIES),
        "lines": lines,
    }
