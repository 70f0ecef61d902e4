"""examples/signups end to end: its app (in process), its relay and a ``celery worker`` on Postgres and Redis.

Each sign-up gets exactly one welcome mail, also when the relay publishes a message a second time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask_outbox import guard
from sqlalchemy import Engine, create_engine, func, select, update

from examples.signups.app import create_app
from examples.signups.contract import ROUTES, USER_SIGNED_UP, SignupSettings
from examples.signups.models import WelcomeMail, db, inbox, outbox
from harness.databases import PostgresFactory
from harness.processes import BIN, TEST_SIGNING_KEY, Service
from harness.waiting import wait_until

SIGNUPS = 5


@pytest.fixture
def settings(
    postgres: PostgresFactory, redis_url: str, queue_prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> SignupSettings:
    """A private database and a private queue prefix on the shared Redis (its keys removed afterwards)."""
    return SignupSettings(
        database_url=postgres.empty("signups"),
        broker_url=redis_url,
        queue_prefix=queue_prefix,
        var_dir=tmp_path / "var",
        message_signing_key=TEST_SIGNING_KEY,
    )


@pytest.fixture
def app(settings: SignupSettings) -> Iterator[Flask]:
    """The example's app, tables created; the guard raises on any publish inside its transactions."""
    app = create_app(settings, TESTING=True, OUTBOX_UNSAFE_DISPATCH="raise")
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()
    guard.uninstall()


@pytest.fixture
def engine(settings: SignupSettings) -> Iterator[Engine]:
    engine = create_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def processes(app: Flask, settings: SignupSettings, tmp_path: Path) -> Iterator[list[Service]]:
    """``python -m examples.signups.relay`` and ``celery -A examples.signups.worker worker``."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "QUEUE_PREFIX"}},
        "SIGNUPS_DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "QUEUE_PREFIX": settings.queue_prefix,
        "VAR_DIR": str(settings.var_dir),
        "MESSAGE_SIGNING_KEY": settings.message_signing_key,
        "LOG_FORMAT": "json",
        "RELAY_POLL_INTERVAL": "0.2",
        "METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    queue = settings.queue(ROUTES[USER_SIGNED_UP].queue)
    worker_command = [
        str(BIN / "celery"), "-A", "examples.signups.worker", "worker", "-Q", queue, "--concurrency", "2",
        "--hostname", f"signups-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    services = [
        Service("relay", [sys.executable, "-m", "examples.signups.relay"], env, tmp_path / "relay.log"),
        Service("worker", worker_command, env, tmp_path / "worker.log"),
    ]
    try:
        for service in services:
            service.start()
        services[0].wait_for_log("relay.started", timeout=30)
        services[1].wait_for_log("ready", timeout=60)
        yield services
    finally:
        for service in services:
            service.stop()
            print(f"--- {service.name}\n{service.logs()[-3000:]}")  # shown only when the test failed


def mails(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return {row.user_id: str(row.message_id) for row in conn.execute(select(WelcomeMail.__table__))}


def test_each_sign_up_gets_exactly_one_welcome_mail(
    app: Flask, engine: Engine, processes: list[Service]
) -> None:
    client = app.test_client()
    responses = [client.post("/signups", json={"email": f"user{i}@example.com"}) for i in range(SIGNUPS)]
    assert [response.status_code for response in responses] == [201] * SIGNUPS
    users = {response.get_json()["id"] for response in responses}

    sent = wait_until(
        lambda: (found := mails(engine)).keys() == users and found,
        timeout=60,
        interval=0.2,
        message="one welcome mail per sign-up",
    )
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(inbox.processed)) == SIGNUPS
        assert conn.scalar(select(func.count()).where(outbox.table.c.published_at.is_(None))) == 0

    # The relay publishes one message again (as after a crash before it marked the row): no second mail.
    first = min(users)
    with engine.begin() as conn:
        conn.execute(
            update(outbox.table).where(outbox.table.c.aggregate_id == str(first)).values(published_at=None)
        )
    wait_until(
        lambda: processes[1].running and "inbox.duplicate_message" in processes[1].logs(),
        timeout=30,
        interval=0.2,
        message="the worker to receive the copy",
    )
    assert mails(engine) == sent
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(inbox.processed)) == SIGNUPS
