"""Retry delays shared by the relay and the worker."""

from __future__ import annotations

import random

__all__ = ["jittered_backoff"]


def jittered_backoff(attempt: int, base: float, ceiling: float) -> float:
    """Seconds: exponential from ``base``, capped at ``ceiling``, jittered in its upper half.

    The jitter spreads the retries of a burst (many rows or messages failing at once) so they do
    not all come back in lockstep.
    """
    top = min(ceiling, base * 2 ** max(attempt - 1, 0))
    return random.uniform(top / 2, top)  # noqa: S311 - jitter, not crypto
