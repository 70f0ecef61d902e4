"""The claim after an outage: its cost does not grow with the backlog, and per-aggregate order holds.

After a broker outage every row of the backlog has failed at least once, and one parked row can
sit anywhere. The order guard used to group every failed row on each claim (a drain quadratic in
the backlog); it is now one index probe per candidate row. The plan is read with EXPLAIN ANALYZE
on the exact statement the relay sends, including with statistics from before the outage (the
planner then believes no row failed), which is when a flattened NOT EXISTS would rescan them all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import redis
from flask_outbox import store
from flask_outbox.messages import BatchOutcome, PendingMessage, Publisher
from sqlalchemy import Connection, Engine, event, text

from harness.outbox import aggregate, consumed, insert_rows, order_violations, outbox_rows
from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings

BACKLOG = 20_000
LIMIT = 200


def _after_outage(engine: Engine, rows: int, aggregates: int, analyze_first: bool) -> None:
    """A backlog whose every row failed once, with the very first row parked.

    ``analyze_first``: statistics taken before the failures, and autovacuum kept from refreshing
    them, as in the minutes after an outage starts.
    """
    insert_rows(engine, outbox_rows(rows, aggregates))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ALTER TABLE outbox SET (autovacuum_enabled = off)"))
        if analyze_first:
            conn.execute(text("ANALYZE outbox"))
        conn.execute(text("UPDATE outbox SET attempts = 2, last_error = 'ConnectionError: broker away'"))
        conn.execute(
            text("UPDATE outbox SET attempts = 20, parked_at = now() WHERE id = (SELECT min(id) FROM outbox)")
        )
        if not analyze_first:
            conn.execute(text("ANALYZE outbox"))


def _claim_plan(engine: Engine) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the statement ``store.claim`` sends (captured as it runs), rolled back."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Connection, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FOR UPDATE" in statement:
            sent.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", capture)
        with conn.begin() as transaction:
            claimed = store.claim(conn, outbox, limit=LIMIT, partitions=None, partition_count=16)
            assert len(claimed.messages) == LIMIT
            transaction.rollback()
        event.remove(conn, "before_cursor_execute", capture)
        [(statement, parameters)] = sent
        with conn.begin() as transaction:
            conn.execute(text("SELECT set_config('jit', 'off', true)"))
            [[plan]] = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).one()
            transaction.rollback()
    return dict(plan["Plan"])


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _rows_touched(node: dict[str, Any]) -> int:
    """Rows a plan node produced or discarded, over all its loops."""
    per_loop = (
        node["Actual Rows"]
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Join Filter", 0)
    )
    return int(per_loop * node["Actual Loops"])


def _assert_claim_touches_about_its_batch(engine: Engine) -> None:
    nodes = list(_nodes(_claim_plan(engine)))
    busiest = max(nodes, key=_rows_touched)

    assert _rows_touched(busiest) <= 3 * LIMIT, (
        f"{busiest['Node Type']} touched {_rows_touched(busiest)} rows"
    )
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]


def test_claim_after_an_outage_touches_its_batch_not_the_backlog(orders_engine: Engine) -> None:
    _after_outage(orders_engine, BACKLOG, BACKLOG // 4, analyze_first=False)

    _assert_claim_touches_about_its_batch(orders_engine)


def test_claim_stays_cheap_on_statistics_from_before_the_outage(orders_engine: Engine) -> None:
    _after_outage(orders_engine, BACKLOG, BACKLOG // 4, analyze_first=True)

    _assert_claim_touches_about_its_batch(orders_engine)


class CountingPublisher:
    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def waiting(self) -> int:
        return 0

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        self.batches.append(len(messages))
        return self.inner.publish(messages)

    def close(self) -> None:
        self.inner.close()


def test_backlog_after_an_outage_drains_in_full_batches_in_order_around_a_parked_row(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    rows, aggregates = 3_000, 750  # four rows per aggregate; aggregate(0)'s first row is parked
    _after_outage(orders_engine, rows, aggregates, analyze_first=False)
    relay = build_relay(pg_settings, orders_engine)
    publisher = relay.publisher = CountingPublisher(relay.publisher)
    try:
        published = relay.drain()
    finally:
        relay.disconnect()
        relay.publisher.close()

    assert published == rows - 4, "only the parked row and the three after it in its aggregate wait"
    assert len(publisher.batches) <= math.ceil(published / relay.policy.batch_size) + 1
    deliveries = consumed(redis_client, pg_settings.queue("invoices"))
    assert len({d.task_id for d in deliveries}) == published
    assert aggregate(0) not in {d.aggregate for d in deliveries}
    assert order_violations(deliveries) == []
