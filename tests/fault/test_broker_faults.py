"""Faults 6 and 7: the broker goes away, with and without the messages it held."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
from sqlalchemy import create_engine, text

from tests.fault.harness import Cluster, report
from tests.fault.orders import bodies, place_in_process
from tests.support.processes import ROOT
from tests.support.waiting import wait_until


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


def reconcile(cluster: Cluster, *args: str) -> str:
    """The operator's recovery: the ids the consumer confirmed, fed to the order side's reconciliation."""
    confirmed = subprocess.run(
        [sys.executable, "-m", "invoice_worker", "confirmed", "--since", "3600"],
        env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    republished = subprocess.run(
        [sys.executable, "-m", "order_service.reconcile", "--older-than", "0", "--window", "3600", *args],
        env=cluster.env, cwd=ROOT, input=confirmed.stdout, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    return republished.stdout


def test_volatile_redis_loss_is_detected_and_recovered_by_reconciliation(cluster: Cluster) -> None:
    cluster.start_relay()
    cluster.start_worker()
    place_in_process(cluster, bodies(5, seed=81))
    cluster.wait_settled(5)
    worker = cluster.services[-1]
    worker.stop()
    place_in_process(cluster, bodies(25, seed=82))
    wait_until(lambda: cluster.checker.verdict().unpublished == 0, timeout=60, message="all published")

    cluster.redis.kill()  # no persistence: the 25 queued tasks are gone
    cluster.redis.start()
    cluster.start_worker(name="worker-2")
    time.sleep(3)
    before = cluster.checker.verdict()
    report("volatile redis SIGKILL, before reconciliation", before)
    assert (len(before.lost), before.unpublished) == (25, 0)  # real loss: published, never consumed

    assert reconcile(cluster, "--dry-run").startswith("would republish: 25")
    assert reconcile(cluster).startswith("republished: 25")

    verdict = cluster.wait_settled(30)
    report("volatile redis SIGKILL, after reconciliation", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert reconcile(cluster).startswith("republished: 0")
