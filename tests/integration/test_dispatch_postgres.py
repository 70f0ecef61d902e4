"""Dispatch after commit: the API publishes ``order.placed`` itself, the relay marks it or stands in.

Real Postgres and Redis, the shipped defaults (``OUTBOX_DISPATCH_AFTER_COMMIT`` on, 5 s grace) except
where a test shortens the grace to see the relay stand in without waiting 5 s: the length of the
grace is not what those tests check, only that the relay publishes once it is over.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
from flask import Flask
from flask_outbox.dispatch import dispatch_log_key
from sqlalchemy import Engine, make_url, select

from harness.outbox import Delivered, consumed, decode
from harness.waiting import wait_until
from order_service import create_app
from order_service.dispatch import DISPATCH_LOG
from order_service.extensions import db
from order_service.metrics import api_metrics
from order_service.models import outbox
from order_service.relay import build_relay
from order_service.services import LineRequest, OrderRefused, PlaceOrder, place_order
from order_service.signals import order_placed
from shared.config import Settings

pytestmark = pytest.mark.integration


def _command() -> PlaceOrder:
    rng = random.Random()
    lines = (LineRequest(f"SKU-{rng.randint(1, 9)}", rng.randint(1, 3), rng.randint(1, 9_999)),)
    return PlaceOrder(customer_id="cus_dispatch", currency="EUR", lines=lines)


@pytest.fixture
def app_for(pg_settings: Settings) -> Iterator[list[Flask]]:
    apps: list[Flask] = []
    yield apps
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def _rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(outbox).order_by(outbox.c.id))]


def test_an_order_is_published_by_the_api_at_commit_and_marked_by_the_relay_not_sent_again(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, app_for: list[Flask]
) -> None:
    app = create_app(pg_settings)
    app_for.append(app)
    queue = pg_settings.queue("invoices")
    with app.app_context():
        place_order(db.session(), _command())
    [row] = _rows(orders_engine)
    [delivered] = consumed(redis_client, queue)
    assert delivered.task_id == str(row["message_id"])
    assert delivered.task == "invoices.order_placed"
    assert row["published_at"] is None
    grace = (row["available_at"] - row["created_at"]).total_seconds()  # type: ignore[operator]
    assert grace == pytest.approx(pg_settings.outbox_dispatch_grace_seconds)
    assert redis_client.lrange(dispatch_log_key(pg_settings.queue_prefix, DISPATCH_LOG), 0, -1) == [
        str(row["message_id"]).encode()
    ]

    relay = build_relay(pg_settings, orders_engine)
    try:
        assert relay.relay_batch().published == []  # marked from the log, not claimed
    finally:
        relay.disconnect()
        relay.publisher.close()
    [row] = _rows(orders_engine)
    assert row["published_at"] is not None
    assert redis_client.llen(queue) == 1, "the relay did not publish it a second time"
    assert redis_client.llen(dispatch_log_key(pg_settings.queue_prefix, DISPATCH_LOG)) == 0


def test_an_order_a_receiver_refuses_rolls_back_and_is_never_dispatched(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, app_for: list[Flask]
) -> None:
    """The outbox row was written (and queued for dispatch) before a later receiver's veto."""
    app = create_app(pg_settings)
    app_for.append(app)

    def refuse(_sender: object, **_: object) -> bool:
        return False

    order_placed.connect(refuse)
    try:
        with app.app_context(), pytest.raises(OrderRefused):
            place_order(db.session(), _command())
    finally:
        order_placed.disconnect(refuse)
    assert _rows(orders_engine) == []
    assert redis_client.llen(pg_settings.queue("invoices")) == 0
    assert redis_client.llen(dispatch_log_key(pg_settings.queue_prefix, DISPATCH_LOG)) == 0


def test_a_dispatch_redis_refuses_is_published_by_the_relay_once_the_grace_is_over(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, app_for: list[Flask]
) -> None:
    """The API's broker is unreachable (a closed port): the order still commits and gets its 201 path;
    the relay, whose broker is fine, publishes the row when its grace ends. Grace shortened to 1 s."""
    broken = pg_settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "outbox_dispatch_grace_seconds": 1.0}
    )
    app = create_app(broken)
    app_for.append(app)
    with app.app_context():
        place_order(db.session(), _command())
    [row] = _rows(orders_engine)
    assert row["published_at"] is None
    relay = build_relay(pg_settings, orders_engine)
    try:
        assert relay.drain() == 0, "not due during its grace"
        time.sleep(1.2)
        assert relay.drain() == 1
    finally:
        relay.disconnect()
        relay.publisher.close()
    [delivered] = consumed(redis_client, pg_settings.queue("invoices"))
    assert delivered.task_id == str(row["message_id"])


def test_a_dispatched_row_wakes_no_relay_and_a_due_row_does(
    pg_settings: Settings, orders_engine: Engine, app_for: list[Flask]
) -> None:
    """The NOTIFY trigger fires only for a statement that inserted a row due now (migration 0007)."""
    conninfo = make_url(pg_settings.orders_database_url).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True) as listener:
        listener.execute("LISTEN outbox")
        app = create_app(pg_settings)
        app_for.append(app)
        with app.app_context():
            place_order(db.session(), _command())
        assert list(listener.notifies(timeout=1.0, stop_after=1)) == []
        undispatched = create_app(pg_settings.model_copy(update={"outbox_dispatch_after_commit": False}))
        app_for.append(undispatched)
        with undispatched.app_context():
            place_order(db.session(), _command())
        wait_until(lambda: bool(list(listener.notifies(timeout=0.5, stop_after=1))), timeout=5)


def test_a_queue_that_stays_behind_hands_the_next_orders_to_the_relay_which_batches_them(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, app_for: list[Flask]
) -> None:
    """The shipped queue limit and behind time (``OUTBOX_DISPATCH_QUEUE_LIMIT``, ``..._BEHIND_SECONDS``);
    messages are pushed straight into the queue, as a backlog of unconsumed tasks would stand there."""
    queue = pg_settings.queue("invoices")
    limit, behind = pg_settings.outbox_dispatch_queue_limit, pg_settings.outbox_dispatch_behind_seconds
    redis_client.lpush(queue, *[b"backlog"] * limit)
    app = create_app(pg_settings)
    app_for.append(app)
    handovers_before = _handovers()
    with app.app_context():
        place_order(db.session(), _command())  # finds the queue behind: the clock starts
        time.sleep(behind + 0.05)
        place_order(db.session(), _command())  # still behind: dispatched, and hands over
        for _ in range(3):
            place_order(db.session(), _command())
    assert _handovers() == handovers_before + 1
    rows = _rows(orders_engine)
    dispatched, rest = rows[:2], rows[2:]
    grace = pg_settings.outbox_dispatch_grace_seconds
    assert [(r["available_at"] - r["created_at"]).total_seconds() for r in dispatched] == pytest.approx(  # type: ignore[operator]
        [grace, grace]
    )
    assert [row["available_at"] == row["created_at"] for row in rest] == [True] * 3, "due at once"
    assert redis_client.llen(queue) == limit + 2, "only the first two were dispatched"

    relay = build_relay(pg_settings, orders_engine)
    try:
        assert relay.drain() == 3
    finally:
        relay.disconnect()
        relay.publisher.close()
    assert redis_client.llen(queue) == limit + 3, "the relay sent the three as one batch task"
    [batch] = _published(redis_client, queue)[2:]
    assert [d.task_id for d in batch] == [str(row["message_id"]) for row in rest]


def test_a_passing_spike_in_the_queue_hands_nothing_over(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, app_for: list[Flask]
) -> None:
    """The queue is behind at one dispatch and has caught up at the next, after the behind time."""
    queue = pg_settings.queue("invoices")
    redis_client.lpush(queue, *[b"backlog"] * pg_settings.outbox_dispatch_queue_limit)
    app = create_app(pg_settings)
    app_for.append(app)
    handovers_before = _handovers()
    with app.app_context():
        place_order(db.session(), _command())
        redis_client.delete(queue)  # the workers caught up
        time.sleep(pg_settings.outbox_dispatch_behind_seconds + 0.05)
        for _ in range(3):
            place_order(db.session(), _command())
    assert _handovers() == handovers_before
    assert all(row["available_at"] > row["created_at"] for row in _rows(orders_engine)), "all dispatched"
    assert redis_client.llen(queue) == 3


def test_a_dispatcher_dispatches_again_once_its_handover_is_over(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, app_for: list[Flask]
) -> None:
    """Hand-over shortened to 0.3 s and behind time to 0 (shipped: 2 s and 0.25 s): only the hold's
    ending is checked, not its length."""
    settings = pg_settings.model_copy(
        update={"outbox_dispatch_handover_seconds": 0.3, "outbox_dispatch_behind_seconds": 0.0}
    )
    queue = settings.queue("invoices")
    redis_client.lpush(queue, *[b"backlog"] * settings.outbox_dispatch_queue_limit)
    app = create_app(settings)
    app_for.append(app)
    with app.app_context():
        place_order(db.session(), _command())
        handed_over = place_order(db.session(), _command())
        redis_client.delete(queue)  # the workers caught up
        time.sleep(0.4)
        again = place_order(db.session(), _command())
    rows = {str(row["aggregate_id"]): row for row in _rows(orders_engine)}
    assert rows[str(handed_over.id)]["available_at"] == rows[str(handed_over.id)]["created_at"]
    assert rows[str(again.id)]["available_at"] > rows[str(again.id)]["created_at"]
    assert [[d.task_id for d in entry] for entry in _published(redis_client, queue)] == [
        [str(rows[str(again.id)]["message_id"])]
    ]


def _published(client: redis.Redis, queue: str) -> list[list[Delivered]]:
    """The queue's entries in consuming order, each as the messages it carries; the stand-ins for a
    backlog (``b"backlog"``) left out."""
    return [decode(raw) for raw in reversed(client.lrange(queue, 0, -1)) if raw != b"backlog"]


def _handovers() -> float:
    return api_metrics().registry.get_sample_value("outbox_dispatch_handovers_total") or 0.0
