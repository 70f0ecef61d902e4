"""Retry delays shared by the relay and the worker."""

from __future__ import annotations

import random

__all__ = ["jittered_backoff"]

_MAX_DOUBLINGS = 64
"""2.0**64 times any sane base is far past any sane ceiling; capping the exponent keeps the float
finite (``base * 2 ** 1025`` raises OverflowError) for a row or message that failed forever."""


def jittered_backoff(attempt: int, base: float, ceiling: float) -> float:
    """Seconds: exponential from ``base``, capped at ``ceiling``, jittered in its upper half.

    The jitter spreads the retries of a burst (many rows or messages failing at once) so they do
    not all come back in lockstep. Any ``attempt`` is valid, however large.
    """
    doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
    top = min(ceiling, base * 2.0**doublings)
    return random.uniform(top / 2, top)  # noqa: S311 - jitter, not crypto
