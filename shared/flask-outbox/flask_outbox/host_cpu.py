"""Whether this host's CPUs are saturated: the relay's cue to send fewer, larger batches.

Batching trades a little latency for CPU: one claim, one publish and one worker task carry several
messages instead of one. That trade pays only when CPU is what limits the pipeline, so the relay makes
it only then (``FlowControl.gather_after``). The host's busy share (psutil's ``cpu_percent``: every CPU,
time waiting on I/O counted as idle) is read at most every ``window`` seconds; between reads the last
verdict stands.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

__all__ = ["HostCpu"]

SATURATED_BELOW = 0.03
"""Idle share of the host's CPU time under which it counts as saturated. Measured on two cores
(``bench/results/gather-trials.txt``): at half the naive app's capacity 100 ms windows under 10 % idle
come often enough that gathering in them took the p50 from 2.2 to 3.2 times the naive app's; windows
under 3 % come only at saturation."""


class HostCpu:
    """Samples the host's busy share of CPU time over consecutive windows."""

    def __init__(
        self,
        window: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        busy_percent: Callable[[], float] = lambda: psutil.cpu_percent(interval=None),
    ) -> None:
        self._window = window
        self._clock = clock
        self._busy_percent = busy_percent
        self._busy_percent()  # opens the first window: psutil compares each call with the one before
        self._sampled_at = clock()
        self._saturated = False

    def saturated(self) -> bool:
        """Whether the host was idle less than ``SATURATED_BELOW`` of the last full window."""
        now = self._clock()
        if now - self._sampled_at >= self._window:
            self._saturated = self._busy_percent() > 100 * (1 - SATURATED_BELOW)
            self._sampled_at = now
        return self._saturated
