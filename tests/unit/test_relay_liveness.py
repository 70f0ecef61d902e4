"""The relay loop outlives any exception, and its ``/healthz`` tells a stuck loop from a working one.

SQLite relays in a thread; the health server listens on 127.0.0.1 only (loopback, port 0).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import structlog
from flask_outbox.health import HealthServer
from flask_outbox.messages import BatchOutcome, PendingMessage
from flask_outbox.relay import OutboxRelay, RelayPolicy
from flask_outbox.wakeup import PollingWaiter
from sqlalchemy import Engine

from harness.outbox import insert_rows, outbox_rows, unpublished
from harness.waiting import wait_until
from order_service.models import outbox


class FlakyPublisher:
    """Raises a non-database error for its first ``failures`` batches, then publishes (after ``gate``)."""

    def __init__(self, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.failures = failures
        self.gate = gate
        self.calls = 0
        self.entered = threading.Event()
        self.published: list[int] = []

    def waiting(self) -> int:
        return 0

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        self.calls += 1
        self.entered.set()
        if self.calls <= self.failures:
            raise RuntimeError(f"publisher bug #{self.calls}")
        if self.gate is not None:
            assert self.gate.wait(30), "test never released the stuck publish"
        self.published.extend(m.id for m in messages)
        return BatchOutcome(published=[m.id for m in messages])

    def close(self) -> None:
        """Nothing held."""


def test_relay_survives_non_database_exceptions_and_publishes_afterwards(engine: Engine) -> None:
    insert_rows(engine, outbox_rows(10, 3))
    publisher = FlakyPublisher(failures=3)
    relay = OutboxRelay(engine, outbox, publisher, RelayPolicy(base_backoff=0.01))
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop, PollingWaiter(stop, 0.05).wait), daemon=True)
    with structlog.testing.capture_logs() as logs:
        thread.start()
        try:
            wait_until(
                lambda: unpublished(engine) == 0, timeout=10, message="rows published after the errors"
            )
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    assert publisher.calls == 4
    assert len(publisher.published) == 10
    failed = [entry for entry in logs if entry["event"] == "relay.loop_failed"]
    assert [entry["attempt"] for entry in failed] == [1, 2, 3]
    assert all(isinstance(entry["exc_info"], RuntimeError) for entry in failed)
    assert [entry["after_failures"] for entry in logs if entry["event"] == "relay.recovered"] == [3]
    assert relay.metrics.loop_errors._value.get() == 3
    assert relay.metrics.published._value.get() == 10


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_healthz_is_503_while_the_loop_is_stuck_and_200_once_it_moves_again(engine: Engine) -> None:
    # 0.5 s instead of the shipped 30 s: this checks the comparison, not the default.
    gate = threading.Event()
    publisher = FlakyPublisher(gate=gate)
    relay = OutboxRelay(engine, outbox, publisher, RelayPolicy(stall_seconds=0.5))
    server = HealthServer(relay.metrics, "127.0.0.1", 0).start()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop, PollingWaiter(stop, 0.05).wait), daemon=True)
    thread.start()
    try:
        assert healthz(server.port)[0] == 200  # idle: every wait completes
        insert_rows(engine, outbox_rows(5, 2))
        assert publisher.entered.wait(10)  # the loop is now stuck inside publish
        _, body = wait_until(
            lambda: (answer := healthz(server.port))[0] == 503 and answer, timeout=10, message="503"
        )
        assert body["status"] == "stalled"
        assert float(str(body["last_progress_age_s"])) > 0.5
        gate.set()
        wait_until(lambda: healthz(server.port)[0] == 200, timeout=10, message="healthy again")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "outbox_relay_published_total 5.0" in metrics
        assert "outbox_relay_last_progress_timestamp_seconds" in metrics
    finally:
        gate.set()
        stop.set()
        thread.join(10)
        server.close()
