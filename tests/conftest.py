"""Fixtures shared by every layer of the suite.

Postgres and Redis are the machine's shared servers (TEST_POSTGRES_URL, TEST_REDIS_URL); a run
isolates itself with its own databases and its own queue prefix. Tests that stop a server start
their own instead (see tests/support/servers.py).

Markers come from the directory a test lives in (``pytestmark`` in a conftest.py marks nothing):
``pytest -m unit``, ``-m integration``, ``-m e2e``, ``-m fault``, ``-m compose``, ``-m "not fault"``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _pytest.nodeid import NodeId
from flask_outbox.db import create_db_engine
from sqlalchemy import Engine

from harness.databases import DatabasePair, PostgresFactory
from harness.processes import TEST_SIGNING_KEY
from shared.config import Settings
from tests.support.prerequisites import missing
from tests.support.rabbitmq import BrokerUser, Vhost, broker_user, private_vhost, rabbitmqctl_missing

TEST_POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

TESTS_ROOT = Path(__file__).resolve().parent
LAYER_MARKERS = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "fault": "fault",
    "compose": "compose",
}
"""Top-level folder under tests/ → the marker every test in it carries."""

SERIAL_GROUP = "serial"
"""``make test`` runs ``pytest -n 5 --dist loadgroup``: the tests of one ``xdist_group`` run one after another
on one worker, every other test goes to whichever worker is free (each isolates itself: its own databases,
queue prefix, free ports, private servers). One at a time in each of two lanes (``serial``, ``serial-2``):
the tests whose bounds are the shipped timings (a loaded machine must not eat their margin), those with a
Postgres cluster of their own (initdb), and the browser. One lane alone took 12 of the suite's 12 minutes;
two keep at most three fault tests' process loops running at once (the two lanes and ``fault``), each with
minutes of margin under its bound. The suite keeps both cores busy (94 % at ``-n 5``): a fifth worker
took it from 9 min 30 s to 9 min; more lanes would only share the same two cores."""
SECOND_LANE = "serial-2"
SECOND_LANE_MODULES = (
    "tests/fault/test_chaos.py",
    "tests/fault/test_multi_host.py",
    "tests/fault/test_relay_hang.py",
    "tests/e2e/test_dashboard_browser.py",
)
"""The second lane: about half of the serial minutes (the soak, the network namespaces, the 30 s stall
bound, the browser)."""
SERIAL_MODULES = (
    "tests/fault/test_chaos.py",  # the soak: lateness bound on the shipped defaults
    "tests/fault/test_relay_hang.py",  # the shipped 30 s stall bound
    "tests/fault/test_rabbitmq_cluster.py",  # three RabbitMQ nodes, the 120 s bound on the shipped defaults
    "tests/e2e/test_dashboard_browser.py",  # Chromium beside the whole loop
)
SERIAL_FIXTURES = frozenset({"private_postgres"})
"""A test that starts its own Postgres cluster (initdb, restarts under load)."""
FAULT_GROUP = "fault"
"""The other fault tests (a private Redis, a loop of processes each): one at a time, beside ``serial``."""
COMPOSE_GROUP = "compose"
"""The compose stack (a private dockerd, one stack per module): its tests stay together, on one worker."""


def _uses_module_fixture(item: pytest.Item) -> bool:
    """A module-scoped fixture (a pipeline, a stack, a collection run) is built by every worker running it."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(chain and chain[-1].scope == "module" for chain in defs)


def _xdist_group(item: pytest.Item, relative: str) -> str | None:
    if relative.startswith("tests/compose/"):
        return COMPOSE_GROUP
    if relative in SECOND_LANE_MODULES:
        return SECOND_LANE
    if (
        relative in SERIAL_MODULES
        or (relative.startswith("tests/fault/") and "shipped_defaults" in item.name)
        or SERIAL_FIXTURES & set(getattr(item, "fixturenames", ()))
    ):
        return SERIAL_GROUP
    if relative.startswith("tests/fault/"):
        return FAULT_GROUP
    if _uses_module_fixture(item):
        return Path(relative).stem  # the module's tests together: its fixture is built once
    return None


def pytest_configure(config: pytest.Config) -> None:
    # The other layers' markers are declared in pyproject.toml; ``unit`` and ``compose`` are only given here.
    config.addinivalue_line("markers", "unit: fast, no network (tests/unit)")
    config.addinivalue_line("markers", "compose: docker compose up on a private engine (tests/compose)")


@pytest.hookimpl(tryfirst=True)  # before the mark plugin deselects by ``-m``
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its layer's folder: a new test file is selected by ``-m`` with no line of its own."""
    for item in items:
        try:
            layer = item.path.resolve().relative_to(TESTS_ROOT).parts[0]
        except ValueError:
            continue
        marker = LAYER_MARKERS.get(layer)
        if marker is not None:
            item.add_marker(marker)
        group = _xdist_group(item, item.path.resolve().relative_to(TESTS_ROOT.parent).as_posix())
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            if getattr(config.option, "loadgroup", False):
                # What pytest-xdist 3.8 does for ``xdist_group`` (a ``@group`` suffix on the node id) sets
                # ``item._nodeid``, which pytest 9 no longer reads: without this every group is split up.
                item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session")
def run_id() -> str:
    """Names this session's databases; under ``pytest -n`` it ends with the worker's id (gw0, gw1, ...)."""
    return uuid.uuid4().hex[:8] + os.environ.get("PYTEST_XDIST_WORKER", "")


@pytest.fixture(scope="session")
def postgres(run_id: str) -> Iterator[PostgresFactory]:
    factory = PostgresFactory(TEST_POSTGRES_URL, run_id=run_id)
    yield factory
    factory.close()


@pytest.fixture
def pg_databases(postgres: PostgresFactory) -> DatabasePair:
    """A fresh, migrated orders database and invoices database for this test alone."""
    return postgres.fresh_pair()


@pytest.fixture
def queue_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}-"


@pytest.fixture(scope="session")
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture
def redis_client(redis_url: str, queue_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=f"{queue_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def pg_settings(pg_databases: DatabasePair, redis_url: str, queue_prefix: str, tmp_path: Path) -> Settings:
    """Production-shaped settings: this test's Postgres databases and a private queue on Redis."""
    return Settings(
        orders_database_url=pg_databases.orders_url,
        invoices_database_url=pg_databases.invoices_url,
        broker_url=redis_url,
        queue_prefix=queue_prefix,
        var_dir=tmp_path / "var",
        message_signing_key=TEST_SIGNING_KEY,
    )


@pytest.fixture(scope="session")
def rabbit_user() -> Iterator[BrokerUser]:
    """This session's RabbitMQ user (a strong password); skips when there is no local RabbitMQ."""
    reason = rabbitmqctl_missing()
    if reason is not None:
        missing(reason)
    with broker_user() as user:
        yield user


@pytest.fixture
def rabbit_vhost(rabbit_user: BrokerUser) -> Iterator[Vhost]:
    """A vhost of its own on the machine's RabbitMQ, for this test alone; deleted afterwards."""
    with private_vhost(rabbit_user) as vhost:
        yield vhost


@pytest.fixture
def amqp_settings(pg_settings: Settings, rabbit_vhost: Vhost) -> Settings:
    """``pg_settings`` on RabbitMQ: this test's databases, queue prefix and vhost."""
    return pg_settings.model_copy(update={"broker_url": rabbit_vhost.url})


@pytest.fixture
def orders_engine(pg_settings: Settings) -> Iterator[Engine]:
    """An engine on this test's orders database."""
    engine = create_db_engine(pg_settings.orders_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Embedded-mode settings under a temporary folder."""
    settings = Settings(var_dir=tmp_path / "var")
    settings.ensure_var_dir()
    return settings
