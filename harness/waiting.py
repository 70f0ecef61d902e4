"""Bounded waiting: every loop in the tests has a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], *, timeout: float, interval: float = 0.1, message: str = "condition"
) -> T:
    """Call ``probe`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout:.0f} s (last: {last!r})")
        time.sleep(interval)
        last = probe()
    return last
