"""Faults 6 and 7: the broker goes away, with and without the messages it held."""

from __future__ import annotations

import time

import httpx
import redis
from sqlalchemy import create_engine, text

from harness.outbox import queued_messages
from harness.waiting import wait_until
from tests.fault.harness import Cluster, report
from tests.fault.orders import bodies, place_in_process


def outbox_errors(cluster: Cluster) -> list[str]:
    engine = create_engine(cluster.databases.orders_url)
    try:
        with engine.connect() as conn:
            query = "SELECT last_error FROM outbox WHERE published_at IS NULL AND last_error IS NOT NULL"
            return list(conn.scalars(text(query)))
    finally:
        engine.dispose()


def test_orders_keep_coming_while_redis_is_down_and_drain_when_it_returns(cluster: Cluster) -> None:
    cluster.start_api()
    relay = cluster.start_relay()
    worker = cluster.start_worker()
    cluster.place_orders(bodies(10, seed=61))
    cluster.wait_settled(10)

    cluster.redis.stop()
    with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
        statuses = [cluster.post_order(client, body).status_code for body in bodies(20, seed=62)]
    assert statuses == [201] * 20  # placing an order never needs the broker
    errors = wait_until(lambda: outbox_errors(cluster), timeout=30, message="relay to record last_error")
    assert relay.running
    assert worker.running
    print(f"relay backing off with last_error: {errors[0]}")

    cluster.redis.start()
    verdict = cluster.wait_settled(30, timeout=120)
    report("redis stopped while orders arrive", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert relay.running
    assert worker.running


def test_persistent_redis_killed_with_unconsumed_tasks_loses_nothing(persistent_cluster: Cluster) -> None:
    cluster = persistent_cluster
    cluster.start_relay()
    place_in_process(cluster, bodies(30, seed=71))
    wait_until(lambda: cluster.checker.verdict().unpublished == 0, timeout=60, message="all published")

    cluster.redis.kill()  # SIGKILL: only what reached the append-only file survives
    cluster.redis.start()
    cluster.start_worker()

    verdict = cluster.wait_settled(30)
    report("persistent redis SIGKILL", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)


def redriven_rows(cluster: Cluster) -> int:
    engine = create_engine(cluster.databases.orders_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM outbox WHERE redrives > 0")) or 0)
    finally:
        engine.dispose()


def queued(cluster: Cluster) -> int:
    """Messages waiting in the invoice queue, each message of a batch task counted."""
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        return queued_messages(client, cluster.queue)
    finally:
        client.close()


def test_volatile_redis_loss_is_repaired_by_the_redrive_with_no_manual_step(cluster: Cluster) -> None:
    """Redis without persistence is SIGKILLed holding 25 published tasks; the relay re-drives them by itself.

    ``OUTBOX_REDRIVE_AFTER_SECONDS=6`` (the shipped 90 s would make this a long test; it must exceed
    the fault suite's ``BROKER_VISIBILITY_TIMEOUT`` of 4 s plus the 1 s restore sweep). No
    consumer answers ``invoice.created`` here (that half of the loop is tested end to end), so no
    row is ever acknowledged and already invoiced orders are re-driven too: the worker absorbs them.
    """
    redrive_after = 6.0
    cluster.overrides.update({"OUTBOX_REDRIVE_AFTER_SECONDS": str(redrive_after)})
    cluster.start_relay()
    worker = cluster.start_worker()
    place_in_process(cluster, bodies(5, seed=81))
    cluster.wait_settled(5)
    worker.stop()
    place_in_process(cluster, bodies(25, seed=82))
    wait_until(lambda: queued(cluster) >= 25, timeout=60, message="25 messages waiting in Redis")
    # Published as far as the outbox knows: the relay published them all before Redis loses them.
    wait_until(lambda: cluster.checker.verdict().unpublished == 0, timeout=30, message="rows marked")

    cluster.redis.kill()  # no persistence: the 25 queued tasks are gone
    lost_at = time.monotonic()
    cluster.redis.start()
    assert queued(cluster) == 0  # the loss is real: published, and nowhere in the broker
    cluster.start_worker(name="worker-2")

    verdict = cluster.wait_settled(30, timeout=60)
    repaired_in = time.monotonic() - lost_at
    report(f"volatile redis SIGKILL, repaired by re-drive in {repaired_in:.1f} s", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert redriven_rows(cluster) >= 25
    assert repaired_in < redrive_after + 30  # re-drive delay plus a bound for a loaded machine
