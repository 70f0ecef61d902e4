"""The relay holds due rows while earlier tasks still wait for a worker, then sends them as one batch.

SQLite relays in a thread with a publisher whose queue length the test sets; the real Redis
``LLEN`` behind ``waiting()`` is covered in tests/integration/test_relay_publishing.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask_outbox import flow_control
from flask_outbox.messages import BatchOutcome, PendingMessage
from flask_outbox.relay import OutboxRelay, RelayPolicy
from flask_outbox.wakeup import PollingWaiter
from sqlalchemy import Engine

from harness.outbox import insert_rows, outbox_rows, unpublished
from harness.waiting import wait_until
from order_service.models import outbox


class QueuePublisher:
    """Records each publish call; ``queued`` is what its queue holds that no worker took yet.

    ``answers_length``: its publish says what waited before it (as the Redis ``LPUSH`` answer does).
    """

    def __init__(self, answers_length: bool = False) -> None:
        self.queued = 0
        self.looks = 0
        self.batches: list[list[int]] = []
        self.answers_length = answers_length

    def waiting(self) -> int:
        self.looks += 1
        return self.queued

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        self.batches.append([m.id for m in messages])
        waiting_before = self.queued if self.answers_length else None
        return BatchOutcome(published=[m.id for m in messages], waiting_before=waiting_before)

    def close(self) -> None:
        """Nothing held."""


@contextmanager
def relaying(engine: Engine, publisher: QueuePublisher, **options: Any) -> Iterator[OutboxRelay]:
    """A relay running in a thread, polling every 20 ms, for the block's duration; it must stop after."""
    relay = OutboxRelay(engine, outbox, publisher, RelayPolicy(), **options)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop, PollingWaiter(stop, 0.02).wait), daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_rows_wait_while_the_queue_is_behind_and_leave_together_once_it_is_taken(engine: Engine) -> None:
    publisher = QueuePublisher()
    with relaying(engine, publisher):
        insert_rows(engine, outbox_rows(1, 1))
        wait_until(lambda: publisher.batches, timeout=10, message="an idle pipeline publishes at once")
        for queued in (2, 1):  # tasks wait, every worker busy; then the queue goes down: they take from it
            publisher.queued, looks = queued, publisher.looks
            wait_until(lambda n=looks: publisher.looks > n + 1, timeout=5, message="the relay saw the queue")
        for _ in range(3):
            insert_rows(engine, outbox_rows(2, 2))
        held, looks = [*publisher.batches], publisher.looks
        # The relay has looked at the queue again and again meanwhile, and held every time.
        wait_until(lambda: publisher.looks > looks + 10, timeout=5, message="the relay kept looking")
        assert unpublished(engine) == 6
        assert publisher.batches == held, "published while the queue was behind"
        publisher.queued = 0  # a worker took it
        wait_until(lambda: unpublished(engine) == 0, timeout=10, message="the held rows published")
    assert [len(batch) for batch in publisher.batches] == [1, 6]


def test_a_publish_that_found_the_queue_empty_spares_the_next_claim_the_look(engine: Engine) -> None:
    """Workers keeping up: each message goes out without asking the broker for its queue's length first.
    Once a publish finds tasks waiting, the relay looks again before the next claim, and holds."""
    publisher = QueuePublisher(answers_length=True)
    with relaying(engine, publisher):
        insert_rows(engine, outbox_rows(1, 1))
        wait_until(lambda: publisher.batches, timeout=10, message="an idle pipeline publishes at once")
        looks = publisher.looks
        for published in range(2, 5):
            insert_rows(engine, outbox_rows(1, 1))
            wait_until(lambda n=published: len(publisher.batches) == n, timeout=10, message="published")
        assert publisher.looks == looks, "asked the broker although the last publish found the queue empty"

        publisher.queued = 2  # every worker busy: this publish finds tasks waiting
        insert_rows(engine, outbox_rows(1, 1))
        wait_until(lambda: len(publisher.batches) == 5, timeout=10, message="published, unheld")
        wait_until(lambda: publisher.looks > looks, timeout=5, message="it looked before its next claim")
        publisher.queued, looks = 1, publisher.looks  # a worker took one: they are taking, one still waits
        wait_until(lambda: publisher.looks > looks + 1, timeout=5, message="the relay looked again")
        insert_rows(engine, outbox_rows(2, 2))
        time.sleep(0.2)  # ten poll intervals
        assert unpublished(engine) == 2, "published while the queue was behind"
        publisher.queued = 0
        wait_until(lambda: unpublished(engine) == 0, timeout=10, message="the held rows published")
    assert [len(batch) for batch in publisher.batches] == [1, 1, 1, 1, 1, 2]


def test_a_queue_nobody_takes_from_does_not_hold_the_relay_back(engine: Engine) -> None:
    """No worker running (or all stuck): holding would batch nothing, so rows go out as they come."""
    publisher = QueuePublisher()
    publisher.queued = 5
    with relaying(engine, publisher):
        for _ in range(3):
            insert_rows(engine, outbox_rows(2, 2))
            wait_until(lambda: unpublished(engine) == 0, timeout=10, message="published while queued")
    assert sum(len(batch) for batch in publisher.batches) == 6


def test_a_broker_that_cannot_say_its_queue_length_does_not_stop_the_relay(engine: Engine) -> None:
    class Unreachable(QueuePublisher):
        def waiting(self) -> int:
            raise ConnectionError("broker unreachable")

    publisher = Unreachable()
    insert_rows(engine, outbox_rows(3, 3))
    with relaying(engine, publisher):
        wait_until(lambda: unpublished(engine) == 0, timeout=10, message="published all the same")


def test_a_saturated_host_sends_what_arrives_during_the_gather_as_one_batch(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows committed 0.2 s apart while the relay gathers go out together. The gather is stretched from
    20 ms to a second so that both inserts surely land inside it on a loaded machine."""
    monkeypatch.setattr(flow_control, "_SATURATED_GATHER", 1.0)
    publisher = QueuePublisher()
    with relaying(engine, publisher, saturated=lambda: True):
        insert_rows(engine, outbox_rows(1, 1))
        wait_until(lambda: unpublished(engine) == 0, timeout=10, message="the first row published")
        insert_rows(engine, outbox_rows(1, 1))
        time.sleep(0.2)  # ten poll intervals: a relay that did not gather would have sent it alone
        insert_rows(engine, outbox_rows(1, 1))
        wait_until(lambda: unpublished(engine) == 0, timeout=10, message="the gathered rows published")
    assert [len(batch) for batch in publisher.batches] == [1, 2]


@pytest.mark.parametrize(
    ("gather", "saturated", "published", "pause"),
    [
        (0.0, False, 1, 0.0),  # an idle host: the next claim at the next commit
        (0.0, True, 1, flow_control._SATURATED_GATHER),
        (0.0, True, RelayPolicy().batch_size, 0.0),  # a full batch: a backlog, claim again at once
        (0.2, False, 1, 0.2),  # answers: their relay always gathers
    ],
)
def test_how_long_the_relay_gathers_after_a_batch(
    engine: Engine, gather: float, saturated: bool, published: int, pause: float
) -> None:
    relay = OutboxRelay(
        engine, outbox, QueuePublisher(), RelayPolicy(gather=gather), saturated=lambda: saturated
    )
    assert relay.flow.gather_after(BatchOutcome(published=list(range(published)))) == pause
