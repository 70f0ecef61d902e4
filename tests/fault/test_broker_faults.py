"""Faults 6 and 7: the broker goes away, with and without the messages it held (Redis and RabbitMQ)."""

from __future__ import annotations

import time

import httpx
import redis
from sqlalchemy import create_engine, text

from harness.outbox import queued_messages
from harness.waiting import wait_until
from tests.fault.harness import Cluster, report
from tests.fault.orders import bodies, place_in_process
from tests.support.private_rabbit import PrivateRabbit

SOAK_RATE = {"RATE_LIMIT": "1000000 per minute"}
"""The one setting changed on the shipped defaults: one client posting in a burst (as the soak's)."""


def outbox_errors(cluster: Cluster) -> list[str]:
    engine = create_engine(cluster.databases.orders_url)
    try:
        with engine.connect() as conn:
            query = "SELECT last_error FROM outbox WHERE published_at IS NULL AND last_error IS NOT NULL"
            return list(conn.scalars(text(query)))
    finally:
        engine.dispose()


def test_orders_placed_while_the_broker_is_stopped_are_invoiced_once_it_returns_shipped_defaults(
    broker_cluster: Cluster,
) -> None:
    """The broker is stopped (gracefully, data kept) while 20 orders come in; back, they all flow.

    Shipped defaults: the figure is the lateness after the broker returns (the relay's failed rows
    wait out their backoff, at most ``RELAY_MAX_BACKOFF`` = 30 s; the worker reconnects by itself).
    """
    cluster = broker_cluster
    cluster.shipped_defaults = True
    cluster.overrides.update(SOAK_RATE)
    cluster.start_api()
    relay = cluster.start_relay()
    worker = cluster.start_worker()
    cluster.place_orders(bodies(10, seed=61))
    cluster.wait_settled(10)

    cluster.redis.stop()
    with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
        statuses = [cluster.post_order(client, body).status_code for body in bodies(20, seed=62)]
    assert statuses == [201] * 20  # placing an order never needs the broker
    errors = wait_until(lambda: outbox_errors(cluster), timeout=60, message="relay to record last_error")
    assert relay.running
    assert worker.running
    print(f"relay backing off with last_error: {errors[0]}")

    cluster.redis.start()
    back = time.monotonic()
    cluster.settled_after(back, 30, f"{scheme(cluster)} stopped while orders arrive")
    assert relay.running
    assert worker.running


def test_broker_killed_with_unconsumed_tasks_loses_nothing(broker_cluster: Cluster) -> None:
    """SIGKILL with 30 orders' tasks published and unconsumed: every one the broker confirmed survives.

    Redis runs with ``appendfsync always``; a RabbitMQ quorum queue confirms a message once its log is
    fsynced. Mechanism (FAULT_ENV): nothing here waits on a timeout.
    """
    cluster = broker_cluster
    cluster.start_relay()
    place_in_process(cluster, bodies(30, seed=71))
    wait_until(lambda: cluster.checker.verdict().unpublished == 0, timeout=60, message="all published")
    time.sleep(1.5)  # a quorum queue's count is a metric refreshed each second (PrivateRabbit)
    before = broker_queued(cluster)
    assert before > 0

    cluster.redis.kill()  # SIGKILL: only what reached the disk survives
    cluster.redis.start()
    after = wait_until(lambda: broker_queued(cluster) or None, timeout=15, message="the queue recovered")
    assert after == before  # every published task is still there
    cluster.start_worker()

    verdict = cluster.wait_settled(30)
    report(f"{scheme(cluster)} SIGKILL, {after} of {before} queued messages back", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)


def redriven_rows(cluster: Cluster) -> int:
    engine = create_engine(cluster.databases.orders_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM outbox WHERE redrives > 0")) or 0)
    finally:
        engine.dispose()


def scheme(cluster: Cluster) -> str:
    return "rabbitmq" if isinstance(cluster.redis, PrivateRabbit) else "redis"


def broker_queued(cluster: Cluster) -> int:
    """Messages waiting in the invoice queue as the broker counts them (on Redis each task, batch or not)."""
    if isinstance(cluster.redis, PrivateRabbit):
        return cluster.redis.queued(cluster.queue)
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        return int(client.llen(cluster.queue))
    finally:
        client.close()


def queued(cluster: Cluster) -> int:
    """Messages waiting in the invoice queue, each message of a batch task counted."""
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        return queued_messages(client, cluster.queue)
    finally:
        client.close()


def test_volatile_redis_loss_is_repaired_by_the_redrive_with_no_manual_step(cluster: Cluster) -> None:
    """Redis without persistence is SIGKILLed holding 25 published tasks; the relay re-drives them by itself.

    Redis only: a quorum queue has no volatile mode (chaos.py purges RabbitMQ's queues instead).

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

    client = redis.Redis.from_url(cluster.redis.url)
    try:
        client.set("test:before-the-kill", "1")
        cluster.redis.kill()  # no persistence: the 25 queued tasks are gone
        lost_at = time.monotonic()
        cluster.redis.start()
        # The loss is real: Redis came back empty. (Not "the queue is empty": the relay may re-drive into
        # it as soon as Redis answers, before this line runs on a loaded machine.)
        assert client.exists("test:before-the-kill") == 0
    finally:
        client.close()
    cluster.start_worker(name="worker-2")

    verdict = cluster.wait_settled(30, timeout=60)
    repaired_in = time.monotonic() - lost_at
    report(f"volatile redis SIGKILL, repaired by re-drive in {repaired_in:.1f} s", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert redriven_rows(cluster) >= 25
    assert repaired_in < redrive_after + 30  # re-drive delay plus a bound for a loaded machine
