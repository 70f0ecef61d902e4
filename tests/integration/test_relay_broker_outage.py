"""The broker as one thing that is up or down: rows wait for it as a whole, and a relay that cannot
reach it gives its partitions to the relays that can.

The relays run their real loops (``OutboxRelay.run``) in threads against real Postgres and Redis; the
broker's faults come from a publisher wrapper that fails every publish as a connection error would.
``stall_seconds=6`` (shipped: 30 s) keeps the hand-over test short: the mechanism is the same, it
releases at half the bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest
import redis
from flask_outbox.messages import BatchOutcome, PendingMessage, Publisher
from flask_outbox.relay import OutboxRelay
from sqlalchemy import Engine, text

from harness.outbox import consumed, insert_rows, outbox_rows
from harness.waiting import wait_until
from order_service.relay import build_relay
from shared.config import Settings

STALL_SECONDS = 6.0


@dataclass
class Switchable:
    """The real publisher, behind a broker that can be made unreachable (as a broken route makes it)."""

    inner: Publisher
    down: bool = False
    attempts: int = 0

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        if not self.down:
            return self.inner.publish(messages)
        self.attempts += 1
        ids = [message.id for message in messages]
        error = "ConnectionError: no route to host"
        return BatchOutcome(failed=dict.fromkeys(ids, error), transient=set(ids))

    def waiting(self) -> int:
        if self.down:
            raise ConnectionError("no route to host")
        return self.inner.waiting()

    def reachable(self) -> bool:
        return not self.down and self.inner.reachable()

    def close(self) -> None:
        self.inner.close()


@dataclass
class Running:
    relay: OutboxRelay
    broker: Switchable
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Running:
        self.thread = threading.Thread(target=self.relay.run, args=(self.stop, lambda: self.stop.wait(0.2)))
        self.thread.start()
        return self

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.relay.publisher.close()


@pytest.fixture
def start_relay(pg_settings: Settings, orders_engine: Engine) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*, down: bool = False) -> Running:
        relay = build_relay(pg_settings, orders_engine)
        relay.policy = replace(relay.policy, stall_seconds=STALL_SECONDS)
        broker = Switchable(relay.publisher, down=down)
        relay.publisher = broker
        running = Running(relay, broker).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.halt()


def unpublished(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) or 0)


def failed(engine: Engine) -> int:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM outbox WHERE published_at IS NULL AND last_error IS NOT NULL"
        return int(conn.scalar(text(query)) or 0)


def waiting_past_now(engine: Engine) -> int:
    """Unpublished rows whose retry time is still ahead (a per-row backoff)."""
    with engine.connect() as conn:
        query = "SELECT count(*) FROM outbox WHERE published_at IS NULL AND available_at > now()"
        return int(conn.scalar(text(query)) or 0)


def test_rows_the_broker_failed_stay_due_and_all_go_out_once_it_answers(
    start_relay: Callable[..., Running],
    orders_engine: Engine,
    redis_client: redis.Redis,
    pg_settings: Settings,
) -> None:
    running = start_relay(down=True)
    insert_rows(orders_engine, outbox_rows(300, 30), notify=True)
    wait_until(lambda: failed(orders_engine) == 300, timeout=30, message="every row refused by the broker")
    time.sleep(STALL_SECONDS)  # well into the outage: a per-row backoff would have pushed rows out by now

    assert unpublished(orders_engine) == 300
    assert waiting_past_now(orders_engine) == 0  # no row backs off on its own: all wait for the broker

    running.broker.down = False
    wait_until(lambda: unpublished(orders_engine) == 0, timeout=15, message="the backlog out once it answers")
    assert len(consumed(redis_client, pg_settings.queue("invoices"))) == 300


def test_a_relay_that_cannot_reach_the_broker_gives_its_partitions_to_one_that_can(
    start_relay: Callable[..., Running],
    orders_engine: Engine,
    redis_client: redis.Redis,
    pg_settings: Settings,
) -> None:
    cut_off = start_relay()
    healthy = start_relay()
    wait_until(
        lambda: len(cut_off.relay.partitions or ()) == len(healthy.relay.partitions or ()) == 8,
        timeout=30,
        message="both relays holding half the partitions",
    )
    cut_off.broker.down = True
    insert_rows(orders_engine, outbox_rows(400, 100), notify=True)

    wait_until(
        lambda: unpublished(orders_engine) == 0,
        timeout=STALL_SECONDS * 4,
        message="every row published by the relay that reaches the broker",
    )
    assert not cut_off.relay.partitions
    assert healthy.relay.partitions == frozenset(range(16))
    assert len(consumed(redis_client, pg_settings.queue("invoices"))) == 400

    cut_off.broker.down = False  # its route is back: it takes its share again
    wait_until(
        lambda: len(cut_off.relay.partitions or ()) == 8, timeout=30, message="the relay back to its share"
    )
