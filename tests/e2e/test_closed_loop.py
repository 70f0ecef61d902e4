"""The closed loop: orders over HTTP -> invoices -> invoice.created back -> orders ``invoiced``.

Real processes: gunicorn, the order relay, the invoice worker (``celery -A invoice_worker``), the
invoice relay (``python -m invoice_worker.relay``) and the order consumer
(``celery -A order_service.worker -Q orders``).
"""

from __future__ import annotations

import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from harness.processes import (
    Service,
    api_service,
    free_port,
    relay_service,
    settings_env,
    wait_for_http,
    worker_service,
)
from harness.waiting import wait_until
from shared.config import Settings
from tests.support.orders import api_headers, order_body, post_orders
from tests.support.servers import PrivateRedis


@dataclass
class Loop:
    base_url: str
    services: list[Service]
    log_dir: Path = field(default_factory=Path)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.logs()[-3000:]}" for s in self.services)


def _published_per_batch(relay: Service) -> list[int]:
    """How many messages each of the relay's batches published, in order (its JSON log lines)."""
    return [int(record["published"]) for record in relay.records("outbox.batch_relayed")]


def order_consumer(env: dict[str, str], log_dir: Path, queue: str, name: str = "order-consumer") -> Service:
    service = worker_service(env, log_dir, queue, concurrency=2, name=name)
    service.command[service.command.index("invoice_worker")] = "order_service.worker"
    return service


def start_loop(settings: Settings, log_dir: Path, **env_extra: str) -> Loop:
    log_dir.mkdir(parents=True, exist_ok=True)
    env = settings_env(settings, **env_extra)
    port = free_port()
    services = [
        api_service(env, log_dir, port),
        relay_service(env, log_dir),
        worker_service(env, log_dir, settings.queue("invoices")),
        order_consumer(env, log_dir, settings.queue("orders")),
        Service(
            "invoice-relay",
            [sys.executable, "-m", "invoice_worker.relay"],
            env,
            log_dir / "invoice-relay.log",
        ),
    ]
    loop = Loop(f"http://127.0.0.1:{port}", [s.start() for s in services], log_dir=log_dir)
    try:
        wait_for_http(f"{loop.base_url}/readyz", timeout=60)
        _api, order_relay, invoice_worker, consumer, invoice_relay = loop.services
        for worker in (invoice_worker, consumer):
            worker.wait_for_log("ready", timeout=60)
        for relay in (order_relay, invoice_relay):
            relay.wait_for_log("relay.started", timeout=60)
    except BaseException:
        loop.stop()
        print(loop.logs())
        raise
    return loop


@dataclass(frozen=True)
class LoopState:
    orders: dict[str, tuple[str, str | None]]
    invoices: dict[str, str]
    unacknowledged: int
    published: int
    redriven_rows: int
    redrives: int


def read_state(settings: Settings) -> LoopState:
    orders_db = create_engine(settings.orders_database_url)
    invoices_db = create_engine(settings.invoices_database_url)
    try:
        with orders_db.connect() as conn:
            orders = {
                str(i): (status, number)
                for i, status, number in conn.execute(text("SELECT id, status, invoice_number FROM orders"))
            }
            unacked, published, redriven, redrives = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE acknowledged_at IS NULL),"
                    " count(*) FILTER (WHERE published_at IS NOT NULL),"
                    " count(*) FILTER (WHERE redrives > 0), coalesce(sum(redrives), 0) FROM outbox"
                )
            ).one()
        with invoices_db.connect() as conn:
            invoices = {str(o): n for o, n in conn.execute(text("SELECT order_id, number FROM invoices"))}
    finally:
        orders_db.dispose()
        invoices_db.dispose()
    return LoopState(orders, invoices, int(unacked), int(published), int(redriven), int(redrives))


def all_invoiced(settings: Settings, expected: int) -> LoopState | None:
    state = read_state(settings)
    done = len(state.orders) >= expected and all(s == "invoiced" for s, _ in state.orders.values())
    return state if done and state.unacknowledged == 0 else None


@pytest.fixture
def loop(pg_settings: Settings, tmp_path: Path) -> Iterator[Loop]:
    running = start_loop(pg_settings, tmp_path / "logs")
    yield running
    running.stop()
    print(running.logs())  # shown only when the test failed


def test_two_hundred_orders_come_back_invoiced_with_their_invoice_numbers(
    loop: Loop, pg_settings: Settings
) -> None:
    bodies = [order_body(random.Random(n)) for n in range(200)]
    started = time.monotonic()

    created = post_orders(loop.base_url, bodies, concurrency=16)
    state = wait_until(
        lambda: all_invoiced(pg_settings, 200), timeout=120, interval=0.5, message="200 orders invoiced"
    )
    wall = time.monotonic() - started

    print(f"200 orders -> 200 invoiced in {wall:.1f} s")
    assert {o["id"] for o in created} == set(state.orders)
    assert {order_id: number for order_id, (_, number) in state.orders.items()} == state.invoices
    assert (state.unacknowledged, state.redriven_rows) == (0, 0)  # every answer came; nothing re-driven
    one = loop_get(loop.base_url, created[0]["id"])
    assert (one["status"], one["invoice_number"]) == ("invoiced", state.invoices[created[0]["id"]])
    assert one["invoiced_at"] is not None


def loop_get(base_url: str, order_id: str) -> dict[str, object]:
    response = httpx.get(f"{base_url}/orders/{order_id}", headers=api_headers(), timeout=10)
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


def test_a_flushall_while_orders_flow_is_repaired_by_the_redrive(
    pg_settings: Settings, tmp_path: Path
) -> None:
    """FLUSHALL on the test's own Redis mid-stream: every order still ends invoiced, with no manual step.

    ``OUTBOX_REDRIVE_AFTER_SECONDS=5`` so the test takes seconds (with ``BROKER_VISIBILITY_TIMEOUT=3``:
    the re-drive must come after a restore, checked at start); the bound it checks is that setting plus
    a margin for a loaded machine, as the shipped 90 s would be.
    """
    redrive_after = 5.0
    private = PrivateRedis(tmp_path / "redis").start()
    settings = pg_settings.model_copy(update={"broker_url": private.url})
    running = start_loop(
        settings,
        tmp_path / "logs",
        OUTBOX_REDRIVE_AFTER_SECONDS=str(redrive_after),
        BROKER_VISIBILITY_TIMEOUT="3",
    )
    try:
        invoice_worker = running.services[2]
        invoice_worker.signal_group(
            signal.SIGSTOP
        )  # so the first orders are certainly in Redis when it flushes
        rng = random.Random(10)
        first = post_orders(running.base_url, [order_body(rng) for _ in range(60)], concurrency=8)
        wait_until(lambda: read_state(settings).published == 60, timeout=30, message="60 published")
        # The paused worker may hold the first tasks it had fetched before SIGSTOP (in its socket, out of
        # Redis's reach): those messages are invoiced without a re-drive. Each task may carry a batch.
        held = sum(_published_per_batch(running.services[1])[:2])
        client = redis.Redis.from_url(private.url)
        client.flushall()  # queues, the unacked set, everything: those 60 tasks are gone
        flushed_at = time.monotonic()
        client.close()
        invoice_worker.signal_group(signal.SIGCONT)
        second = post_orders(running.base_url, [order_body(rng) for _ in range(60)], concurrency=8)

        state = wait_until(
            lambda: all_invoiced(settings, 120),
            timeout=redrive_after + 60,
            interval=0.5,
            message="120 invoiced",
        )
        repaired_in = time.monotonic() - flushed_at
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()
        private.stop()

    print(
        f"FLUSHALL: 120 orders invoiced {repaired_in:.1f} s after the flush;"
        f" {state.redriven_rows} rows re-driven ({state.redrives} re-drives)"
    )
    assert {o["id"] for o in first + second} == set(state.orders)
    assert {order_id: number for order_id, (_, number) in state.orders.items()} == state.invoices  # one each
    assert len(state.invoices) == 120
    assert state.redriven_rows >= 60 - held  # the flushed ones, but for what the paused worker held
    assert repaired_in < redrive_after + 45
