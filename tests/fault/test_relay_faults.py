"""Faults 1-3: the relay dies mid-batch, or rows commit out of id order; every order gets one invoice.

Faults 1 and 2 are reproduced exactly, in-process: the relay's own claim and
publisher run on a connection that is then dropped without a commit, which is what the database
sees when a relay process is SIGKILLed at that point. The chaos soak SIGKILLs real relay processes at
random points.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask_outbox import store
from flask_outbox.db import utcnow
from sqlalchemy import Connection, create_engine, select, text

from harness.waiting import wait_until
from order_service import create_app
from order_service.extensions import db
from order_service.models import outbox
from order_service.relay import build_relay
from order_service.services import LineRequest, PlaceOrder, place_order
from tests.fault.harness import Cluster, report
from tests.fault.orders import bodies, cluster_settings, place_in_process


@contextmanager
def crashing_connection(cluster: Cluster) -> Iterator[Connection]:
    """A connection whose transaction is never committed: on exit it is dropped, as by SIGKILL."""
    engine = create_engine(cluster.databases.orders_url)
    conn = engine.connect()
    conn.begin()
    try:
        yield conn
    finally:
        conn.invalidate()
        engine.dispose()


def claim_all(conn: Connection) -> list[store.PendingMessage]:
    claimed = store.claim(
        conn, outbox, limit=1000, now=utcnow(), partitions=None, partition_count=1, guard_order=False
    )
    return claimed.messages


def unpublished(cluster: Cluster) -> int:
    return cluster.checker.verdict().unpublished


def test_relay_killed_after_publishing_before_committing_republishes_and_invoices_once(
    broker_cluster: Cluster,
) -> None:
    """Mechanism (FAULT_ENV), on Redis and on RabbitMQ (a batch confirmed; the relay dies uncommitted)."""
    cluster = broker_cluster
    cluster.start_worker()
    place_in_process(cluster, bodies(20, seed=1))
    engine = create_engine(cluster.databases.orders_url)
    relay = build_relay(cluster_settings(cluster), engine)
    with crashing_connection(cluster) as conn:
        batch = claim_all(conn)
        outcome = relay.publisher.publish(batch)
        assert len(outcome.published) == 20
        wait_until(
            lambda: len(cluster.checker.verdict().invoices) == 20, timeout=60, message="first delivery"
        )
    relay.publisher.close()
    engine.dispose()
    assert unpublished(cluster) == 20  # the crash lost the marks, not the rows

    cluster.start_relay()
    cluster.wait_settled(20)
    # Every message went out twice; the inbox absorbed each second delivery.
    verdict = wait_until(lambda: (v := cluster.checker.verdict()).redeliveries == 20 and v, timeout=60)
    report("relay SIGKILL between publish and commit", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)


def test_relay_killed_holding_claimed_rows_releases_them_to_another_relay(cluster: Cluster) -> None:
    cluster.start_worker()
    place_in_process(cluster, bodies(20, seed=2))
    with crashing_connection(cluster) as conn:
        assert len(claim_all(conn)) == 20  # rows locked by the relay that is about to die
        cluster.start_relay("relay-2")
        place_in_process(cluster, bodies(5, seed=3))
        wait_until(lambda: unpublished(cluster) == 20, timeout=30, message="later rows published")
        # Locked rows are skipped, not waited on: later orders flow while the dead relay's rows are held.
        wait_until(lambda: len(cluster.checker.verdict().invoices) == 5, timeout=60, message="5 invoices")
        assert unpublished(cluster) == 20
    verdict = cluster.wait_settled(25)
    report("relay SIGKILL after claim", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)


def test_lower_outbox_id_committed_after_higher_ids_were_relayed_is_still_published(cluster: Cluster) -> None:
    cluster.start_worker()
    cluster.start_relay()
    app = create_app(cluster_settings(cluster))
    flushed, gate = threading.Event(), threading.Event()

    def slow_order() -> None:
        with app.app_context():
            session = db.session()
            commit = session.commit

            def late_commit() -> None:
                flushed.set()
                gate.wait(60)
                commit()

            session.commit = late_commit  # type: ignore[method-assign]
            place_order(session, PlaceOrder("cus_slow_commit", "EUR", (LineRequest("BOOK-1", 1, 100),)))
            db.session.remove()

    slow = threading.Thread(target=slow_order)
    slow.start()
    try:
        assert flushed.wait(30)
        place_in_process(cluster, bodies(5, seed=4))
        wait_until(lambda: len(cluster.checker.verdict().invoices) == 5, timeout=60, message="later orders")
    finally:
        gate.set()
        slow.join(30)
    verdict = cluster.wait_settled(6)
    report("lower id commits late", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    engine = create_engine(cluster.databases.orders_url)
    with engine.connect() as conn:
        ids = dict(conn.execute(select(outbox.c.aggregate_id, outbox.c.id)).all())
        slow_id = conn.scalar(text("SELECT id FROM orders WHERE customer_id = 'cus_slow_commit'"))
    engine.dispose()
    with app.app_context():
        db.engine.dispose()
    assert ids[str(slow_id)] < min(v for k, v in ids.items() if k != str(slow_id))
