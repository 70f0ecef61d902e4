"""Outbox rows in bulk and a consumer's view of a Redis queue, for relay tests and the benchmark."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from flask_outbox.db import utcnow
from flask_outbox.relay import OutboxRelay
from flask_outbox.wakeup import PollingWaiter, waiter_for
from flask_outbox.writer import bucket_of
from sqlalchemy import Engine, func, insert, select, text

from order_service.models import outbox
from shared.contracts import ORDER_PLACED, OrderPlaced


def order_id_for(label: str) -> str:
    """The test order id named ``label``: a canonical UUID, as the contracts require, the same every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, label))


def aggregate(n: int) -> str:
    """The ``n``th test order id."""
    return order_id_for(f"agg-{n}")


def order_payload(order_id: str, seq: int = 0) -> dict[str, Any]:
    """A valid ``order.placed`` payload; ``seq`` rides along in the line's sku to check ordering."""
    return OrderPlaced(
        order_id=order_id,
        customer_id="cus_bench",
        currency="EUR",
        lines=[{"sku": f"SEQ-{seq}", "quantity": 1, "unit_amount": 100 + seq, "amount_total": 100 + seq}],
        amount_total=100 + seq,
        placed_at=datetime(2026, 1, 1, tzinfo=UTC),
    ).to_payload()


def outbox_rows(
    count: int, aggregates: int, topic: str = ORDER_PLACED, start: int = 0
) -> list[dict[str, Any]]:
    """``count`` rows spread round-robin over ``aggregates`` aggregates; seq increases per aggregate."""
    now = utcnow()
    rows = []
    for n in range(start, start + count):
        order_id = aggregate(n % aggregates)
        rows.append(
            {
                "message_id": uuid.uuid4(),
                "topic": topic,
                "aggregate_type": "order",
                "aggregate_id": order_id,
                "bucket": bucket_of(order_id),
                "payload": order_payload(order_id, n // aggregates),
                "headers": {"schema_version": 1, "correlation_id": f"corr-{n}"},
                "created_at": now,
                "available_at": now,
                "attempts": 0,
            }
        )
    return rows


def insert_rows(engine: Engine, rows: list[dict[str, Any]], notify: bool = False) -> None:
    """Commit rows directly; without ``notify`` the NOTIFY trigger is off: a lost notification."""
    with engine.begin() as conn:
        if not notify and conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))  # triggers do not fire
        for start in range(0, len(rows), 5_000):
            conn.execute(insert(outbox), rows[start : start + 5_000])


@dataclass(frozen=True)
class Delivered:
    """One message as a consumer would take it off the queue."""

    task_id: str
    task: str
    payload: dict[str, Any]
    headers: dict[str, Any]

    @property
    def aggregate(self) -> str:
        return str(self.payload["order_id"])

    @property
    def seq(self) -> int:
        return int(self.payload["lines"][0]["sku"].removeprefix("SEQ-"))


def decode(raw: bytes | str) -> list[Delivered]:
    """The messages one queue entry carries: one for a single task, each of a batch task's in order."""
    envelope = json.loads(raw)
    args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    assert args == []
    task = envelope["headers"]["task"]
    if "messages" in kwargs:  # a batch task (flask_outbox.batches)
        return [
            Delivered(entry["message_id"], task, entry["payload"], entry["headers"])
            for entry in kwargs["messages"]
        ]
    return [Delivered(envelope["headers"]["id"], task, kwargs["payload"], envelope["headers"])]


def consumed(client: redis.Redis, queue: str) -> list[Delivered]:
    """The queue's messages in the order a worker would consume them (LPUSH at the head, BRPOP from
    the tail), a batch task's messages in their order within it."""
    return [message for raw in reversed(client.lrange(queue, 0, -1)) for message in decode(raw)]


def queued_messages(client: redis.Redis, queue: str) -> int:
    """How many messages wait in ``queue``, counting each message of a batch task."""
    return len(consumed(client, queue))


def order_violations(deliveries: list[Delivered]) -> list[str]:
    """Aggregates whose first deliveries are not in seq order (redeliveries after a crash are allowed)."""
    seen: dict[str, list[int]] = defaultdict(list)
    first: set[str] = set()
    for delivered in deliveries:
        if delivered.task_id in first:
            continue
        first.add(delivered.task_id)
        seen[delivered.aggregate].append(delivered.seq)
    return [aggregate for aggregate, seqs in seen.items() if seqs != sorted(seqs)]


@contextmanager
def running_relay(
    relay: OutboxRelay, poll_interval: float, notify: bool = True
) -> Iterator[threading.Thread]:
    """``relay.run`` in a thread (NOTIFY wake-up on Postgres unless ``notify`` is off), stopped on exit."""
    stop = threading.Event()
    waiter = waiter_for(relay.engine, stop, poll_interval) if notify else PollingWaiter(stop, poll_interval)
    thread = threading.Thread(target=relay.run, args=(stop, waiter.wait), name="relay", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=15)
        waiter.close()
        relay.publisher.close()
    assert not thread.is_alive(), "relay did not stop"


def unpublished(engine: Engine) -> int:
    """Outbox rows not published yet."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(outbox.c.published_at.is_(None))) or 0)
