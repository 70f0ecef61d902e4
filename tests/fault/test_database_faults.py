"""Faults 8 and 9: the orders database restarts under load; the invoices database goes away or read-only."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
from sqlalchemy import create_engine, text

from harness.processes import Service
from harness.waiting import wait_until
from shared.config import Settings
from tests.fault.harness import FAULT_ENV, Cluster, report
from tests.fault.orders import bodies, place_in_process
from tests.support.read_only import set_read_only
from tests.support.servers import PrivatePostgres

SHIPPED = {str(f.validation_alias): f.default for f in Settings.model_fields.values()}
SHIPPED_DEFAULTS = {name: str(SHIPPED[name]) for name in FAULT_ENV}
"""Overrides that put back every setting ``FAULT_ENV`` shortens: the worker runs as an operator deploys it."""


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
    worker.wait_for_log("inbox.retry_scheduled", timeout=60)
    time.sleep(4)  # several rounds of backoff against a database that is not there
    private_postgres.start()

    verdict = wait_until(lambda: (v := cluster.checker.verdict()) and not v.lost and v, timeout=120)
    report("invoice database outage", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert verdict.dead_letters == 0
    assert worker.logs().count("inbox.database_trouble") >= 20


def events(service: Service, name: str) -> list[dict[str, object]]:
    """The structured log lines a process wrote for one event."""
    return service.records(name)


def test_invoice_database_read_only_for_a_while_loses_no_order_with_the_shipped_defaults(
    invoices_down_cluster: Cluster,
) -> None:
    """A failover onto a replica: every write fails with an InternalError until it is writable again."""
    cluster = invoices_down_cluster
    cluster.overrides.update(SHIPPED_DEFAULTS)
    cluster.start_api()
    cluster.start_relay()
    worker = cluster.start_worker()
    accepted = cluster.place_orders(bodies(5, seed=95))
    wait_until(lambda: len(cluster.checker.verdict().invoices) == 5, timeout=60, message="5 invoices")

    started = time.monotonic()
    set_read_only(cluster.databases.invoices_url, True)
    for body in bodies(30, seed=96):  # spread over the read-only spell, as orders arrive
        accepted += cluster.place_orders([body])
        time.sleep(0.3)

    def refused() -> set[str]:
        return {str(e["message_id"]) for e in events(worker, "inbox.database_trouble")}

    wait_until(
        lambda: len(refused()) >= 30, timeout=30, message="every new message to meet the read-only database"
    )
    assert all("read-only transaction" in str(e["error"]) for e in events(worker, "inbox.database_trouble"))
    assert len(cluster.checker.verdict().invoices) == 5  # nothing could be written meanwhile
    time.sleep(max(0.0, 15 - (time.monotonic() - started)))  # the spell lasts 15 s in all
    set_read_only(cluster.databases.invoices_url, False)
    writable = time.monotonic()

    verdict = cluster.wait_settled(35, timeout=60)
    caught_up = time.monotonic() - writable
    report(f"invoice database read-only for 15 s; all invoiced {caught_up:.1f} s after", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert verdict.dead_letters == 0
    assert {verdict.invoices.get(order_id) for order_id in accepted} == {1}
    created = Counter(str(e["order_id"]) for e in events(worker, "invoice.created"))
    assert created == Counter(accepted)  # one invoice effect per accepted order, counted past any constraint
    # No message waits longer than one capped countdown (20 s shipped) once the database is writable.
    assert caught_up < float(SHIPPED_DEFAULTS["WORKER_RETRY_BACKOFF_MAX"]) + 10
