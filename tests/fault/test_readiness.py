"""Probes and backlog metrics while this test's own broker and database go away and come back.

Real processes (gunicorn, the order relay, the invoice worker) on a private Redis and a private
Postgres. The API needs no broker (orders go to the outbox), so it stays ready without Redis; the
relay and the worker need both. While the broker is down the relay cannot publish: its backlog
gauge counts the orders placed meanwhile, agrees with ``relay status``, and falls to 0 once Redis
is back.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from harness.processes import ROOT, free_port
from harness.waiting import wait_until
from tests.fault.harness import Cluster
from tests.fault.orders import bodies
from tests.support.scrape import scrape, value
from tests.support.servers import PrivatePostgres

ORDERS = 5


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0


def _relay_status(cluster: Cluster) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "order_service.relay", "status"],
        env=cluster.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def test_readiness_follows_the_broker_and_the_database_and_the_backlog_drains_after_the_outage(
    private_pg_cluster: Cluster, private_postgres: PrivatePostgres
) -> None:
    cluster = private_pg_cluster
    relay_port, worker_port = free_port(), free_port()
    api = cluster.start_api()
    cluster.start_relay(metrics_port=relay_port)
    worker = cluster.start_worker(metrics_port=worker_port)
    worker.wait_for_log("worker.metrics_serving")
    ready = {
        "api": f"{api}/readyz",
        "relay": f"http://127.0.0.1:{relay_port}/readyz",
        "worker": f"http://127.0.0.1:{worker_port}/readyz",
    }
    relay_metrics = f"http://127.0.0.1:{relay_port}/metrics"

    def statuses() -> dict[str, int]:
        return {name: _status(url) for name, url in ready.items()}

    all_ready = {"api": 200, "relay": 200, "worker": 200}
    wait_until(lambda: statuses() == all_ready, timeout=30, message="every process ready")

    # The broker goes away: the relay and the worker are not ready, the API is.
    cluster.redis.stop()
    without_broker = {"api": 200, "relay": 503, "worker": 503}
    wait_until(lambda: statuses() == without_broker, timeout=30, message=f"{without_broker}")
    assert _status(f"http://127.0.0.1:{relay_port}/healthz") == 200  # alive: its loop goes on
    cluster.place_orders(bodies(ORDERS, seed=12))
    wait_until(
        lambda: (
            value(s := scrape(relay_metrics), "outbox_backlog") == ORDERS
            and value(s, "outbox_relay_publish_failures_total") >= 1
        ),
        timeout=30,
        message="the backlog gauge to count orders the relay tried, in vain",
    )
    started = time.monotonic()
    status = _relay_status(cluster)
    samples = scrape(relay_metrics)
    between = time.monotonic() - started  # the CLI's start-up under load: the scrape reads a later age
    assert int(status["backlog"]) == value(samples, "outbox_backlog") == ORDERS
    later_by = value(samples, "outbox_oldest_due_age_seconds") - float(status["oldest_due_age_s"])
    assert -1.0 < later_by < between + 1.0, (later_by, between)
    assert value(samples, "outbox_relay_publish_failures_total") >= 1

    cluster.redis.start()
    wait_until(lambda: statuses() == all_ready, timeout=60, message="ready again with the broker back")
    wait_until(
        lambda: value(scrape(relay_metrics), "outbox_backlog") == 0,
        timeout=60,
        message="the backlog to drain",
    )
    samples = scrape(relay_metrics)
    assert value(samples, "outbox_relay_published_total") == ORDERS
    assert value(samples, "outbox_oldest_due_age_seconds") == 0
    assert _relay_status(cluster)["backlog"] == "0"
    cluster.wait_settled(ORDERS)

    # The database goes away: nothing is ready, and the relay cannot read its backlog.
    private_postgres.stop()
    nothing_ready = {"api": 503, "relay": 503, "worker": 503}
    wait_until(lambda: statuses() == nothing_ready, timeout=30, message=f"{nothing_ready}")
    assert value(scrape(relay_metrics), "outbox_status_up") == 0
    private_postgres.start()
    wait_until(lambda: statuses() == all_ready, timeout=60, message="ready again with the database back")
    assert value(scrape(relay_metrics), "outbox_status_up") == 1
