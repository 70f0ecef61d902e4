"""A relay process SIGKILLed after the broker accepted its batch and before its commit.

How the test holds the relay exactly there, without a test-only switch in the product: in its own
database it adds a deferred constraint trigger on the outbox, fired at COMMIT by a claim's stamp, that
waits for an advisory lock the test holds. The relay claims (stamping its rows published) and
publishes; its COMMIT waits. The test sees both facts from outside (the batch in the Redis queue, the
relay's session waiting on a lock in ``COMMIT``), then SIGKILLs the process while it holds its row
locks and partition locks. Its COMMIT did reach the server, which a relay killed a moment earlier
never sends; so the test ends the dead relay's backend before it lets go of the lock, as the server
does for a client that is gone before committing: the transaction rolls back.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask_outbox.partitions import LockKeys, relay_holdings
from flask_outbox.relay import RelayPolicy
from sqlalchemy import Engine, func, select, text

from harness.outbox import queued_messages
from harness.processes import Service, relay_service, settings_env, worker_service
from harness.waiting import wait_until
from order_service import create_app
from order_service.extensions import db
from order_service.models import outbox
from order_service.services import LineRequest, PlaceOrder, place_order
from shared.config import Settings
from tests.support.checks import read_ledger

ORDERS = 50
BATCH = 20
"""The killed relay's batch: published to Redis, never committed; the rest it never claimed."""

RELAY_SESSION = "application_name LIKE 'outbox-relay%' AND datname = current_database()"
HOLD_KEY = 7357
"""The advisory lock the test holds, and the commit trigger waits for."""

HOLD_COMMIT = (
    f"""CREATE FUNCTION test_hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_advisory_xact_lock({HOLD_KEY}); RETURN NULL; END $$""",
    """CREATE CONSTRAINT TRIGGER test_hold_commit AFTER UPDATE ON outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.published_at IS NULL AND NEW.published_at IS NOT NULL) EXECUTE FUNCTION test_hold_commit()""",
)
RELEASE_COMMIT = ("DROP TRIGGER test_hold_commit ON outbox", "DROP FUNCTION test_hold_commit()")


def _place_orders(app: Flask, count: int) -> None:
    rng = random.Random(7)
    with app.app_context():
        for _ in range(count):
            lines = (LineRequest(f"SKU-{rng.randint(1, 9)}", rng.randint(1, 3), rng.randint(1, 9_999)),)
            place_order(db.session(), PlaceOrder(customer_id="cus_crash", currency="EUR", lines=lines))
        db.session.remove()
        db.engine.dispose()


def _unpublished(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(outbox.c.published_at.is_(None))) or 0


def _run(engine: Engine, statements: tuple[str, ...]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def _relay_waiting_to_commit(engine: Engine) -> int | None:
    """The backend pid of a relay session blocked on the test's lock inside its ``COMMIT``."""
    with engine.connect() as conn:
        pid = conn.scalar(
            text(
                f"SELECT pid FROM pg_stat_activity WHERE {RELAY_SESSION} AND state = 'active'"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory' AND query ILIKE 'COMMIT%'"
            )
        )
    return int(pid) if pid is not None else None


def _settled(logs: str) -> int:
    """Messages the worker finished: invoiced, or found already done (batches and single tasks alike)."""
    return sum(
        logs.count(event)
        for event in ("invoice.created", "invoice.duplicate_message", "invoice.already_exists")
    )


def _session_alive(engine: Engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}))


def _rows_locked_by_others(engine: Engine) -> int:
    """Unpublished rows that another session holds ``FOR UPDATE`` (skipped by ours, then released)."""
    with engine.connect() as conn, conn.begin():
        free = conn.execute(
            text("SELECT id FROM outbox WHERE published_at IS NULL FOR UPDATE SKIP LOCKED")
        ).all()
        total = conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) or 0
        conn.rollback()
    return total - len(free)


def _partitions_held(engine: Engine, pid: int) -> tuple[int, ...]:
    with engine.connect() as conn:
        held = relay_holdings(conn, LockKeys.for_table("outbox"))
    return next((relay.partitions for relay in held if relay.pid == pid), ())


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()
    for service in started:
        print(f"--- {service.name}\n{service.logs()[-3000:]}")


def test_relay_sigkilled_between_publish_and_commit_republishes_and_the_worker_invoices_once(
    pg_settings: Settings,
    orders_engine: Engine,
    redis_client: redis.Redis,
    services: list[Service],
    tmp_path: Path,
) -> None:
    # The relay's own publish-then-commit is what is killed.
    _place_orders(create_app(pg_settings), ORDERS)
    queue = pg_settings.queue("invoices")
    env = settings_env(pg_settings, RELAY_BATCH_SIZE=str(BATCH))
    _run(orders_engine, HOLD_COMMIT)
    lock_holder = orders_engine.connect()
    lock_holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": HOLD_KEY})
    try:
        doomed = relay_service(env, tmp_path, name="doomed").start()
        services.append(doomed)
        pid = wait_until(
            lambda: _relay_waiting_to_commit(orders_engine),
            timeout=30,
            message="the relay to block in its commit, after publishing",
        )
        assert pid is not None
        assert queued_messages(redis_client, queue) == BATCH, "the broker holds the published batch"
        assert _rows_locked_by_others(orders_engine) == BATCH, "the relay holds its claimed rows"
        assert _partitions_held(orders_engine, pid) == tuple(range(RelayPolicy().partitions))
        doomed.kill()
        assert doomed.process is not None
        assert doomed.process.returncode == -9
        with orders_engine.connect() as conn:  # the COMMIT the killed relay would not have sent
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        lock_holder.close()
    _run(orders_engine, RELEASE_COMMIT)

    wait_until(
        lambda: not _session_alive(orders_engine, pid), timeout=30, message="the dead relay's session to end"
    )
    assert _unpublished(orders_engine) == ORDERS, "the killed relay's claim was committed"
    assert _rows_locked_by_others(orders_engine) == 0
    assert _partitions_held(orders_engine, pid) == ()
    assert "outbox.batch_relayed" not in doomed.logs()
    assert queued_messages(redis_client, queue) == BATCH

    restarted = relay_service(env, tmp_path, name="restarted").start()
    services.append(restarted)
    wait_until(lambda: _unpublished(orders_engine) == 0, timeout=60, message="the restarted relay to drain")
    assert queued_messages(redis_client, queue) == ORDERS + BATCH, (
        "every row again, plus the batch sent before the kill"
    )

    worker = worker_service(env, tmp_path, queue).start()
    services.append(worker)
    wait_until(
        lambda: redis_client.llen(queue) == 0 and _settled(worker.logs()) == ORDERS + BATCH,
        timeout=90,
        interval=0.5,
        message="every delivery, duplicates included, to be processed",
    )

    ledger = read_ledger(pg_settings.orders_database_url, pg_settings.invoices_database_url)
    logs = worker.logs()
    duplicates = logs.count("invoice.duplicate_message") + logs.count("invoice.already_exists")
    print(f"deliveries={ORDERS + BATCH} invoices={len(ledger.invoices)} duplicates_absorbed={duplicates}")
    assert len(ledger.invoices) == ORDERS
    assert ledger.lost == set()
    assert ledger.doubled == set()
    assert ledger.wrong_totals == set()
    assert logs.count("invoice.created") == ORDERS
    assert duplicates == BATCH
