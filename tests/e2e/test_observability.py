"""Seeing the pipeline: metrics from every process, one request id and one trace from request to invoice.

Real processes (gunicorn with two workers, both relays, both Celery workers with their prefork
pools), each serving its metrics, tracing on with the console exporter (spans as JSON lines in
the process's output). Orders flow end to end once per module; the tests read what they left.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from harness.databases import PostgresFactory
from harness.processes import (
    TEST_SIGNING_KEY,
    Service,
    api_service,
    free_port,
    invoice_relay_service,
    order_consumer_service,
    relay_service,
    settings_env,
    wait_for_http,
    worker_service,
)
from harness.waiting import wait_until
from shared.config import Settings
from tests.support.orders import api_headers, order_body
from tests.support.scrape import Sample, scrape, spans, value

ORDERS = 6
REQUEST_ID = f"req-{uuid.uuid4().hex[:12]}"
PLACE_ORDER = "invoices.order_placed"
APPLY_ANSWER = "orders.invoice_created"


@dataclass
class Observed:
    settings: Settings
    api: str
    metrics: dict[str, str]
    """Process name -> its /metrics URL."""
    services: dict[str, Service]
    before: dict[str, dict[Sample, float]] = field(default_factory=dict)
    order_ids: list[str] = field(default_factory=list)
    traced_order: str = ""

    def scrape_all(self) -> dict[str, dict[Sample, float]]:
        return {name: scrape(url) for name, url in self.metrics.items()}

    def delta(self, process: str, name: str, **labels: str) -> float:
        return value(scrape(self.metrics[process]), name, **labels) - value(
            self.before[process], name, **labels
        )

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{s.logs()[-3000:]}" for n, s in self.services.items())


def _start(settings: Settings, log_dir: Path) -> Observed:
    log_dir.mkdir(parents=True, exist_ok=True)
    api_port = free_port()
    names = ("api", "relay", "worker", "invoice-relay", "consumer")
    metrics_ports = {name: free_port() for name in names}  # the API's /metrics is off its public port
    env = settings_env(settings, OTEL_TRACES_EXPORTER="console")

    def on(name: str) -> dict[str, str]:
        return {**env, "METRICS_PORT": str(metrics_ports[name])}

    services = {
        "api": api_service(on("api"), log_dir, api_port),
        "relay": relay_service(on("relay"), log_dir),
        "worker": worker_service(on("worker"), log_dir, settings.queue("invoices")),
        "invoice-relay": invoice_relay_service(on("invoice-relay"), log_dir),
        "consumer": order_consumer_service(on("consumer"), log_dir, settings.queue("orders")),
    }
    api = f"http://127.0.0.1:{api_port}"
    observed = Observed(
        settings=settings,
        api=api,
        metrics={name: f"http://127.0.0.1:{port}/metrics" for name, port in metrics_ports.items()},
        services={name: service.start() for name, service in services.items()},
    )
    try:
        wait_for_http(f"{api}/readyz", timeout=60)
        for name in ("relay", "worker", "invoice-relay", "consumer"):
            wait_for_http(f"http://127.0.0.1:{metrics_ports[name]}/readyz", timeout=60)
    except BaseException:
        _stop(observed)
        print(observed.logs())
        raise
    return observed


def _stop(observed: Observed) -> None:
    for service in reversed(observed.services.values()):
        service.stop()


def _place(observed: Observed) -> None:
    """``ORDERS`` orders, the first with our ``X-Request-ID`` and retried once with its idempotency key."""
    with httpx.Client(base_url=observed.api, timeout=30) as client:
        body, first_headers = order_body(), {**api_headers(), "X-Request-ID": REQUEST_ID}
        first = client.post("/orders", json=body, headers=first_headers)
        assert first.status_code == 201, first.text
        assert first.headers["X-Request-ID"] == REQUEST_ID
        replay = client.post("/orders", json=body, headers=first_headers)
        assert replay.status_code == 201
        assert replay.headers.get("Idempotent-Replayed") == "true"
        observed.traced_order = first.json()["id"]
        observed.order_ids.append(observed.traced_order)
        for _ in range(ORDERS - 1):
            response = client.post("/orders", json=order_body(), headers=api_headers())
            assert response.status_code == 201, response.text
            generated = response.headers["X-Request-ID"]
            assert generated
            assert generated != REQUEST_ID
            observed.order_ids.append(response.json()["id"])


def _all_invoiced(observed: Observed) -> bool:
    with httpx.Client(base_url=observed.api, timeout=10, headers=api_headers()) as client:
        return all(client.get(f"/orders/{i}").json()["status"] == "invoiced" for i in observed.order_ids)


@pytest.fixture(scope="module")
def observed(
    postgres: PostgresFactory, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    pair = postgres.fresh_pair()
    root = tmp_path_factory.mktemp("observability")
    prefix = f"test-{uuid.uuid4().hex[:10]}-"
    settings = Settings(
        orders_database_url=pair.orders_url,
        invoices_database_url=pair.invoices_url,
        broker_url=redis_url,
        queue_prefix=prefix,
        var_dir=root / "var",
        message_signing_key=TEST_SIGNING_KEY,
    )
    running = _start(settings, root / "logs")
    try:
        running.before = running.scrape_all()
        _place(running)
        wait_until(lambda: _all_invoiced(running), timeout=90, interval=0.3, message="every order invoiced")
        yield running
    finally:
        _stop(running)
        print(running.logs())  # shown by pytest only when a test failed
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _settled(observed: Observed, process: str, name: str, expected: float, **labels: str) -> float:
    """A worker counts a delivery just after its transaction commits: wait (bounded) for the count."""
    wait_until(
        lambda: observed.delta(process, name, **labels) >= expected,
        timeout=20,
        message=f"{process} {name}{labels} to move by {expected}",
    )
    return observed.delta(process, name, **labels)


def test_every_endpoint_counts_the_orders_that_flowed_end_to_end(observed: Observed) -> None:
    n = ORDERS
    post = {"route": "/orders", "method": "POST"}
    assert observed.delta("api", "orders_placed_total") == n
    assert observed.delta("api", "orders_idempotent_replays_total") == 1
    assert observed.delta("api", "http_requests_total", status="201", **post) == n + 1
    assert observed.delta("api", "http_request_duration_seconds_count", **post) == n + 1
    assert observed.delta("api", "http_request_duration_seconds_bucket", le="+Inf", **post) == n + 1
    public = httpx.get(f"{observed.api}/metrics", timeout=10)
    assert public.status_code == 404  # the API's metrics are on its METRICS_PORT only, never its public port

    for relay in ("relay", "invoice-relay"):
        assert observed.delta(relay, "outbox_relay_published_total") == n
        assert observed.delta(relay, "outbox_relay_batch_size_sum") == n
        assert observed.delta(relay, "outbox_relay_batch_duration_seconds_count") >= 1
        assert observed.delta(relay, "outbox_relay_publish_failures_total") == 0
        assert observed.delta(relay, "outbox_relay_publish_lag_seconds_count") == n
        now = scrape(observed.metrics[relay])
        assert value(now, "outbox_backlog") == 0
        assert value(now, "outbox_oldest_due_age_seconds") == 0
        assert value(now, "outbox_parked") == 0
        assert value(now, "outbox_relay_partitions_held") == 16  # the only relay of its table holds all

    created = _settled(
        observed, "worker", "worker_task_deliveries_total", n, task=PLACE_ORDER, outcome="created"
    )
    assert created == n
    assert observed.delta("worker", "invoices_created_total") == n
    assert observed.delta("worker", "invoice_duplicates_skipped_total") == 0
    assert observed.delta("worker", "worker_task_duration_seconds_count", task=PLACE_ORDER) == n
    assert observed.delta("worker", "order_to_invoice_latency_seconds_count") == n
    assert observed.delta("worker", "worker_dead_letters_total") == 0
    assert observed.delta("worker", "worker_task_retries_total") == 0

    invoiced = _settled(
        observed, "consumer", "worker_task_deliveries_total", n, task=APPLY_ANSWER, outcome="invoiced"
    )
    assert invoiced == n
    assert observed.delta("consumer", "worker_task_duration_seconds_count", task=APPLY_ANSWER) == n


def test_one_request_id_is_in_the_api_worker_relay_and_consumer_lines_of_its_order(
    observed: Observed,
) -> None:
    order_id = observed.traced_order
    with_id = {
        name: [line for line in service.logs().splitlines() if REQUEST_ID in line]
        for name, service in observed.services.items()
    }
    assert any('"order.placed"' in line and order_id in line for line in with_id["api"]), with_id["api"]
    assert any('"outbox.batch_relayed"' in line for line in with_id["relay"]), with_id["relay"]
    assert any('"invoice.created"' in line and order_id in line for line in with_id["worker"]), with_id[
        "worker"
    ]
    assert any('"outbox.batch_relayed"' in line for line in with_id["invoice-relay"])
    assert any('"order.invoice_recorded"' in line and order_id in line for line in with_id["consumer"])
    # Only our order's lines carry it: the other orders got ids of their own.
    others = set(observed.order_ids) - {order_id}
    assert not any(other in line for line in with_id["worker"] for other in others)


def _headers(url: str, table: str, order_id: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = text(f"SELECT message_id, headers FROM {table} WHERE aggregate_id = :id")
            message_id, headers = conn.execute(query, {"id": order_id}).one()
    finally:
        engine.dispose()
    return {"message_id": str(message_id), **headers}


def test_the_worker_and_consumer_spans_belong_to_the_post_orders_trace(observed: Observed) -> None:
    order_id = observed.traced_order
    placed = _headers(observed.settings.orders_database_url, "outbox", order_id)
    answer = _headers(observed.settings.invoices_database_url, "outbox", order_id)
    assert placed["x_request_id"] == REQUEST_ID == answer["x_request_id"]

    api_spans = [s for s in spans(observed.services["api"].logs()) if s["name"] == "POST /orders"]
    request_span = next(s for s in api_spans if s["context"]["span_id"][2:] in placed["traceparent"])
    trace_id = request_span["context"]["trace_id"]

    def task_span(service: str, name: str, message_id: str) -> dict[str, Any]:
        found = [
            s
            for s in spans(observed.services[service].logs())
            if s["name"] == f"run/{name}" and s["attributes"].get("messaging.message.id") == message_id
        ]
        assert found, f"no {name} span for {message_id} in the {service}'s output"
        return found[0]

    worker = task_span("worker", PLACE_ORDER, placed["message_id"])
    consumer = task_span("consumer", APPLY_ANSWER, answer["message_id"])
    assert worker["context"]["trace_id"] == trace_id
    assert consumer["context"]["trace_id"] == trace_id
    relay_spans = [s for s in spans(observed.services["relay"].logs()) if s["name"] == "publish order.placed"]
    assert any(s["context"]["trace_id"] == trace_id for s in relay_spans)
