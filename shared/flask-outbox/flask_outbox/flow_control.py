"""When a relay holds due rows back, and how long it lets them gather, instead of publishing at once.

Two rules, no settings (``docs/design.md#flow-control``):

* **Hold** while tasks published earlier still wait in a queue that workers are taking from: a message
  published now would only wait behind them, one task each; held, the rows that arrive meanwhile go out
  together once a worker takes the last waiting task, as one batch task (``flask_outbox.batches``), so a
  busy worker pays its per-task cost once per batch. An idle pipeline never holds: its queue is empty.
  A publish that saw the queues empty (``BatchOutcome.waiting_before``, from the Redis ``LPUSH``'s own
  answer) spares the next claim the look: one broker round trip less per message while workers keep up.
* **Gather** after a batch that published everything it claimed: ``RelayPolicy.gather`` when set
  (answers nobody waits on), else only while the host's CPU is saturated (``HostCpu``) and the batch
  was not full (a full one means a backlog: claim again at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask_outbox.broker import BROKER_ERRORS
from flask_outbox.messages import BatchOutcome

__all__ = ["HOLD_TICK", "FlowControl"]

HOLD_TICK = 0.005
"""How often a relay holding back looks at its queues again: the most a held row waits past the moment
a worker takes the last waiting task."""

_TAKEN_WITHIN = 1.0
"""How recently a queue must have gone down for the relay to hold back for it: workers are taking from it."""

_SATURATED_GATHER = 0.02
"""The gather while the host's CPU is saturated. In ``make bench`` (two cores) it took the product from
0.82 to about 1.0 of the naive app's paired throughput (batch tasks of several orders at saturation),
with latency at half and a quarter of the naive capacity unchanged: the host is not saturated there."""


class FlowControl:
    """One relay's reading of its queues (``waiting``: tasks not yet taken) and of the host's CPU."""

    def __init__(
        self, waiting: Callable[[], int], saturated: Callable[[], bool], batch_size: int, gather: float
    ) -> None:
        self._waiting = waiting
        self._saturated = saturated
        self._batch_size = batch_size
        self._gather = gather
        self._queued = 0
        self._taken_at = -_TAKEN_WITHIN  # when the queues were last seen shorter than before
        self._kept_up = False  # the last publish found no task waiting in its queues

    def workers_behind(self) -> bool:
        """Whether tasks published earlier still wait in a queue while workers are taking from it.

        A queue that has not gone down for ``_TAKEN_WITHIN`` has no worker taking from it (none
        running, or all stuck): holding back would not batch anything, so the relay publishes as
        usual. A broker fault says no: the claim that follows meets it and backs off as usual. After a
        publish that found nothing waiting the answer is no without asking: the workers were keeping up,
        and the next publish's answer says whether they still are (one batch goes out unheld at most).
        """
        if self._kept_up:
            return False
        try:
            queued = self._waiting()
        except BROKER_ERRORS:
            return False
        now = time.monotonic()
        if queued < self._queued:
            self._taken_at = now
        self._queued = queued
        return queued > 0 and now - self._taken_at < _TAKEN_WITHIN

    def published(self, outcome: BatchOutcome) -> None:
        """Note what a batch's publish saw of its queues (``waiting_before``; ``None``: it cannot tell)."""
        if outcome.published:
            self._kept_up = outcome.waiting_before == 0

    def gather_after(self, outcome: BatchOutcome) -> float:
        """Seconds to let rows gather before the next claim, after a batch that published them all: then
        each claim, publish and worker task carries several messages, and the CPU they would have spent
        one message at a time goes to the requests. An idle host never waits."""
        if self._gather:
            return self._gather
        if len(outcome.published) < self._batch_size and self._saturated():
            return _SATURATED_GATHER
        return 0.0
