"""Relay processes: three at once (each publishes), SIGKILL and SIGTERM mid-drain, SQLite's single relay."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask_outbox.partitions import LockKeys, relay_holdings
from sqlalchemy import Engine, func, select, text

from harness.outbox import consumed, insert_rows, order_violations, outbox_rows, queued_messages
from harness.processes import ROOT, Service, pipeline_env, relay_service, run_migrations, settings_env
from harness.waiting import wait_until
from order_service.models import outbox
from shared.config import Settings

ROWS = 20_000


@pytest.fixture
def relay_env(pg_settings: Settings) -> dict[str, str]:
    return settings_env(
        pg_settings,
        RELAY_BATCH_SIZE="200",
        LOG_LEVEL="WARNING",
    )


@pytest.fixture
def relays(relay_env: dict[str, str], tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()
    for service in started:
        print(f"--- {service.name}\n{service.logs()[-3000:]}")


def _unpublished(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(outbox.c.published_at.is_(None))) or 0


def _status(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "order_service.relay", "status"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


def _published_by(service: Service) -> int:
    """Messages this relay process says it published: its structured ``outbox.batch_relayed`` lines."""
    return sum(int(record["published"]) for record in service.records("outbox.batch_relayed"))


def _shares(engine: Engine) -> list[int]:
    """How many partitions each live relay holds, smallest first."""
    with engine.connect() as conn:
        return sorted(len(relay.partitions) for relay in relay_holdings(conn, LockKeys.for_table("outbox")))


def test_three_relays_each_publish_and_together_send_each_message_once_in_aggregate_order(
    relay_env: dict[str, str],
    relays: list[Service],
    orders_engine: Engine,
    redis_client: redis.Redis,
    pg_settings: Settings,
    tmp_path: Path,
) -> None:
    """Two relays join one that is mid-drain; a second half arrives once all three hold fair shares."""
    queue = pg_settings.queue("invoices")
    rows = outbox_rows(ROWS, 1_000)
    env = {**relay_env, "LOG_LEVEL": "INFO"}  # each batch's structured line counts what that process sent
    insert_rows(orders_engine, rows[: ROWS // 2])
    for n in range(3):
        relays.append(relay_service(env, tmp_path, name=f"relay-{n}").start())
        wait_until(lambda: redis_client.llen(queue) > 0, timeout=30, message="publishing to start")
    wait_until(lambda: _shares(orders_engine) == [4, 6, 6], timeout=30, message="three fair shares")
    insert_rows(orders_engine, rows[ROWS // 2 :], notify=True)
    wait_until(lambda: _unpublished(orders_engine) == 0, timeout=120, message="the backlog to drain")
    status = _status(relay_env)

    wait_until(  # a batch is logged just after its commit
        lambda: sum(_published_by(relay) for relay in relays) >= ROWS,
        timeout=10,
        message="every relay's last batch line",
    )
    published = {relay.name: _published_by(relay) for relay in relays}
    print(f"published per relay: {published}")
    assert all(count > 0 for count in published.values()), published
    assert sum(published.values()) == ROWS, published
    deliveries = consumed(redis_client, queue)
    assert len(deliveries) == ROWS
    assert len({d.task_id for d in deliveries}) == ROWS, "a message was published twice"
    assert order_violations(deliveries) == []
    assert "relays_alive: 3" in status
    held = [line.rsplit("partitions=", 1)[1] for line in status.splitlines() if line.startswith("relay:")]
    partitions = [int(p) for share in held for p in share.split(",") if p != "-"]
    assert sorted(partitions) == list(range(16)), status


def test_partitions_of_a_killed_relay_are_taken_over(
    relay_env: dict[str, str],
    relays: list[Service],
    orders_engine: Engine,
    redis_client: redis.Redis,
    pg_settings: Settings,
    tmp_path: Path,
) -> None:
    queue = pg_settings.queue("invoices")
    insert_rows(orders_engine, outbox_rows(ROWS, 1_000))
    env = {**relay_env, "RELAY_BATCH_SIZE": "10", "LOG_LEVEL": "INFO"}  # slow enough to be caught mid-drain
    doomed = relay_service(env, tmp_path, name="doomed").start()
    relays.append(doomed)
    wait_until(
        lambda: queued_messages(redis_client, queue) > 500, timeout=30, message="the doomed relay to publish"
    )
    survivor = relay_service(env, tmp_path, name="survivor").start()
    relays.append(survivor)
    wait_until(lambda: _holding(orders_engine) == 2, timeout=30, message="both relays to hold partitions")
    doomed.kill()  # SIGKILL mid-drain, while it holds its partitions
    assert doomed.process is not None
    assert doomed.process.returncode == -signal.SIGKILL
    survivor_before = _published_by(survivor)
    left = _unpublished(orders_engine)
    assert left > 0, "nothing left to take over"

    wait_until(lambda: _unpublished(orders_engine) == 0, timeout=120, message="the survivor to drain")
    wait_until(
        lambda: _published_by(survivor) - survivor_before >= left,
        timeout=10,
        message="the survivor's log to account for every row left by the killed relay",
    )
    deliveries = consumed(redis_client, queue)
    assert {d.task_id for d in deliveries} == {str(m) for m in _ids(orders_engine)}
    assert order_violations(deliveries) == []
    assert "partitions=" + ",".join(map(str, range(16))) in _status(env)


def _holding(engine: Engine) -> int:
    """How many live relays hold at least one partition."""
    with engine.connect() as conn:
        return sum(1 for relay in relay_holdings(conn, LockKeys.for_table("outbox")) if relay.partitions)


def _ids(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(conn.scalars(select(outbox.c.message_id)))


def test_sigterm_mid_drain_exits_cleanly_leaving_no_row_lost_or_locked(
    relay_env: dict[str, str],
    relays: list[Service],
    orders_engine: Engine,
    redis_client: redis.Redis,
    pg_settings: Settings,
    tmp_path: Path,
) -> None:
    queue = pg_settings.queue("invoices")
    insert_rows(orders_engine, outbox_rows(ROWS, 1_000))
    relay = relay_service({**relay_env, "RELAY_BATCH_SIZE": "20", "LOG_LEVEL": "INFO"}, tmp_path).start()
    relays.append(relay)
    wait_until(
        lambda: queued_messages(redis_client, queue) > 1_000, timeout=30, message="the relay to be mid-drain"
    )
    relay.signal_group(signal.SIGTERM)
    assert relay.process is not None
    assert relay.process.wait(timeout=20) == 0
    assert "relay.stopped" in relay.logs()

    left = _unpublished(orders_engine)
    assert 0 < left < ROWS
    with orders_engine.begin() as conn:
        locked = conn.execute(
            text("SELECT id FROM outbox WHERE published_at IS NULL FOR UPDATE NOWAIT")
        ).all()
        assert len(locked) == left
    published_ids = {str(m) for m in _ids(orders_engine)} - set(_unpublished_ids(orders_engine))
    assert published_ids <= {d.task_id for d in consumed(redis_client, queue)}, "marked but never sent"

    finish = subprocess.run(
        [sys.executable, "-m", "order_service.relay", "--once"],
        env=relay_env, cwd=ROOT, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert finish.returncode == 0
    assert _unpublished(orders_engine) == 0
    assert {d.task_id for d in consumed(redis_client, queue)} == {str(m) for m in _ids(orders_engine)}


def _unpublished_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            str(m) for m in conn.scalars(select(outbox.c.message_id).where(outbox.c.published_at.is_(None)))
        ]


def test_a_second_relay_on_sqlite_says_so_and_exits_non_zero(tmp_path: Path, relays: list[Service]) -> None:
    var = tmp_path / "var"
    env = pipeline_env(orders_url="", invoices_url="", broker_url="", var_dir=var)
    run_migrations(env)
    first = relay_service(env, tmp_path, name="first").start()
    relays.append(first)
    first.wait_for_log("relay.started")

    second = subprocess.run(
        [sys.executable, "-m", "order_service.relay"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert second.returncode == 3
    assert "another relay" in second.stderr
    assert "embedded mode runs exactly one relay" in second.stderr
    assert first.running
