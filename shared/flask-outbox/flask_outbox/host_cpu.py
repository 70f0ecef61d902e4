"""Whether this host's CPUs are saturated: the relay's cue to send fewer, larger batches.

Batching trades a little latency for CPU: one claim, one publish and one worker task carry several
messages instead of one. That trade pays only when CPU is what limits the pipeline, so the relay makes
it only then (``OutboxRelay``, "gather while saturated"). The host's CPU counters (``/proc/stat``,
Linux) are read at most every ``window`` seconds; between reads the last verdict stands. Where they
cannot be read (another OS, a sandbox), the host never counts as saturated and nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["HostCpu"]

SATURATED_BELOW = 0.03
"""Idle share of the host's CPU time under which it counts as saturated. Measured on two cores
(``bench/results/gather-trials.txt``): at half the naive app's capacity 100 ms windows under 10 % idle
come often enough that gathering in them took the p50 from 2.2 to 3.2 times the naive app's; windows
under 3 % come only at saturation."""


class HostCpu:
    """Samples the host's idle share of CPU time over consecutive windows."""

    def __init__(
        self,
        stat: Path = Path("/proc/stat"),
        window: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stat = stat
        self._window = window
        self._clock = clock
        self._sampled_at = clock()
        self._last = self._read()
        self._saturated = False

    def _read(self) -> tuple[int, int] | None:
        """(all CPU time, idle time) in ticks since boot, from the summary ``cpu`` line."""
        try:
            with self._stat.open() as stat:
                fields = [int(value) for value in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(fields) < 5:
            return None
        # user nice system idle iowait irq softirq steal: waiting on I/O leaves the CPU free too.
        return sum(fields), fields[3] + fields[4]

    def saturated(self) -> bool:
        """Whether the host was idle less than ``SATURATED_BELOW`` of the last full window."""
        now = self._clock()
        if now - self._sampled_at < self._window:
            return self._saturated
        sample = self._read()
        if sample is not None and self._last is not None:
            total, idle = sample[0] - self._last[0], sample[1] - self._last[1]
            self._saturated = total > 0 and idle / total < SATURATED_BELOW
        self._last, self._sampled_at = sample, now
        return self._saturated
