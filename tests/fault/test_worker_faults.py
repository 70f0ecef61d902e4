"""Faults 4 and 5: workers die or run past the visibility timeout; every order still gets one invoice."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from tests.fault.faulty_worker import KILLS_ONCE, SLOW
from tests.fault.harness import Cluster, report
from tests.fault.orders import bodies, place_in_process
from tests.support.waiting import wait_until


def deliveries_of(cluster: Cluster) -> list[int]:
    engine = create_engine(cluster.databases.invoices_url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(text("SELECT deliveries FROM message_deliveries ORDER BY 1")))
    finally:
        engine.dispose()


def test_worker_child_killed_mid_task_is_redelivered_and_invoiced_once(cluster: Cluster) -> None:
    cluster.start_worker(app="tests.fault.faulty_worker")
    cluster.start_relay()

    place_in_process(cluster, bodies(5, seed=41, customer_id=KILLS_ONCE) + bodies(20, seed=42))

    verdict = cluster.wait_settled(25)
    report("worker child SIGKILL mid-task", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert verdict.dead_letters == 0
    assert deliveries_of(cluster).count(2) >= 5  # each killed delivery came back once


def test_whole_worker_killed_with_reserved_tasks_is_redelivered_after_visibility_timeout(
    cluster: Cluster,
) -> None:
    worker = cluster.start_worker(app="tests.fault.faulty_worker", concurrency=2)
    cluster.start_relay()
    place_in_process(cluster, bodies(6, seed=43, customer_id=f"{SLOW}3") + bodies(10, seed=44))
    wait_until(lambda: len(deliveries_of(cluster)) >= 2, timeout=30, message="tasks to start")

    worker.kill()  # SIGKILL the pool and its parent with tasks executing and reserved
    cluster.start_worker(name="worker-2", app="tests.fault.faulty_worker")

    verdict = cluster.wait_settled(16, timeout=120)
    report("whole worker SIGKILL", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert verdict.redeliveries >= 1


def test_task_longer_than_visibility_timeout_delivered_twice_concurrently_makes_one_invoice(
    cluster: Cluster,
) -> None:
    for n in range(2):
        cluster.start_worker(name=f"worker-{n}", app="tests.fault.faulty_worker")
    cluster.start_relay()

    place_in_process(cluster, bodies(2, seed=45, customer_id=f"{SLOW}9"))

    verdict = cluster.wait_settled(2, timeout=120)
    report("task longer than visibility timeout", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert max(deliveries_of(cluster)) >= 2  # it really was delivered again while still running
    assert verdict.dead_letters == 0
