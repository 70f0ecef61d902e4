"""Faults 8 and 9: the orders database restarts under load; the invoices database goes away for a while."""

from __future__ import annotations

import threading
import time

import httpx
from sqlalchemy import create_engine, text

from tests.fault.harness import Cluster, report
from tests.fault.orders import bodies, place_in_process
from tests.support.servers import PrivatePostgres
from tests.support.waiting import wait_until


def orders_without_outbox_rows(cluster: Cluster) -> int:
    engine = create_engine(cluster.databases.orders_url)
    try:
        with engine.connect() as conn:
            query = (
                "SELECT count(*) FROM orders o"
                " WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE aggregate_id = o.id::text)"
            )
            return conn.scalar(text(query)) or 0
    finally:
        engine.dispose()


def test_orders_database_restart_under_load_answers_503_and_everything_recovers(
    private_pg_cluster: Cluster, private_postgres: PrivatePostgres
) -> None:
    cluster = private_pg_cluster
    cluster.start_api()
    relay = cluster.start_relay()
    cluster.start_worker()
    responses: list[httpx.Response] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
            for body in bodies(2000, seed=91):
                if stop.is_set():
                    return
                responses.append(cluster.post_order(client, body))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(lambda: len(responses) >= 20, timeout=60, message="load to start")
        private_postgres.restart(down_for=2)
        time.sleep(2)
    finally:
        stop.set()
        loader.join(60)

    statuses = sorted({r.status_code for r in responses})
    unavailable = [r for r in responses if r.status_code == 503]
    bare_500s = [r for r in responses if r.status_code == 500]
    print(f"{len(responses)} requests during the restart: {statuses}, {len(unavailable)} x 503")
    assert set(statuses) <= {201, 503}, [r.text for r in bare_500s[:3]]
    assert unavailable  # the fault did bite
    for response in unavailable:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "Traceback" not in response.text
    cluster.place_orders(bodies(10, seed=92))  # the API recovered by itself

    verdict = cluster.wait_settled(timeout=120)
    report("orders database restart", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert orders_without_outbox_rows(cluster) == 0
    assert relay.running


def test_invoice_database_outage_is_retried_with_backoff_until_it_returns(
    invoices_down_cluster: Cluster, private_postgres: PrivatePostgres
) -> None:
    cluster = invoices_down_cluster
    cluster.start_relay()
    worker = cluster.start_worker()
    place_in_process(cluster, bodies(5, seed=93))
    wait_until(lambda: len(cluster.checker.verdict().invoices) == 5, timeout=60, message="5 invoices")

    private_postgres.stop()
    place_in_process(cluster, bodies(20, seed=94))
    worker.wait_for_log("invoice.retry_scheduled", timeout=60)
    time.sleep(4)  # several rounds of backoff against a database that is not there
    private_postgres.start()

    verdict = wait_until(lambda: (v := cluster.checker.verdict()) and not v.lost and v, timeout=120)
    report("invoice database outage", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert verdict.dead_letters == 0
    assert worker.logs().count("invoice.database_trouble") >= 20
