"""Fault tests: each owns a private broker (a private Postgres where it restarts one) and real processes.

Most own a private Redis; a test about what any broker does when it stops, dies or loses a consumer takes
``broker_cluster`` instead and runs twice, on a private Redis (append-only, as compose runs it) and on
a private RabbitMQ node (quorum queues).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from harness.databases import DatabasePair, PostgresFactory
from tests.fault.harness import Broker, Cluster
from tests.support.prerequisites import missing
from tests.support.private_rabbit import PrivateRabbit
from tests.support.rabbit_cluster import rabbitmq_available
from tests.support.servers import PrivatePostgres, PrivateRedis


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test body failed, so fixtures print process logs only then."""
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """Redis as compose runs it: append-only file, fsync on every write."""
    server = PrivateRedis(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A private broker of each kind in turn: Redis with its append-only file, or a RabbitMQ node."""
    if request.param == "redis":
        redis = PrivateRedis(tmp_path / "redis", persistent=True).start()
        yield redis
        redis.stop()
        return
    if not rabbitmq_available():
        missing("needs the RabbitMQ server (rabbitmq-server)")
    rabbit = PrivateRabbit(tmp_path / "rabbit")
    try:
        yield rabbit.start()
    finally:
        if request.node.stash.get(FAILED, True) and rabbit.nodes.nodes:
            print(rabbit.nodes.tail(rabbit.node))
        rabbit.close()


@pytest.fixture
def broker_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresFactory, broker: Broker
) -> Iterator[Cluster]:
    """Databases on the shared Postgres, the private ``broker`` (Redis, then RabbitMQ)."""
    yield from _cluster(request, tmp_path, broker, postgres)


def _cluster(
    request: pytest.FixtureRequest, root: Path, redis: Broker, factory: PostgresFactory
) -> Iterator[Cluster]:
    cluster = Cluster(root=root, redis=redis, databases=factory.fresh_pair())
    yield cluster
    cluster.close()
    if request.node.stash.get(FAILED, True):
        print(cluster.logs())


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresFactory, private_redis: PrivateRedis
) -> Iterator[Cluster]:
    """Databases on the shared Postgres (never restarted here), a private Redis."""
    yield from _cluster(request, tmp_path, private_redis, postgres)


@pytest.fixture
def persistent_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresFactory, persistent_redis: PrivateRedis
) -> Iterator[Cluster]:
    yield from _cluster(request, tmp_path, persistent_redis, postgres)


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(tmp_path / "pg").init().start()
    yield server
    server.stop("immediate")


@pytest.fixture
def private_pg_cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
) -> Iterator[Cluster]:
    """Both databases on a Postgres this test may stop and restart."""
    factory = PostgresFactory(private_postgres.url())
    yield from _cluster(request, tmp_path, private_redis, factory)


@pytest.fixture
def invoices_down_cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres: PostgresFactory,
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
) -> Iterator[Cluster]:
    """Orders on the shared Postgres; invoices on a Postgres this test may stop."""
    invoices = PostgresFactory(private_postgres.url()).fresh_pair().invoices_url
    pair = DatabasePair(orders_url=postgres.fresh_pair().orders_url, invoices_url=invoices)
    cluster = Cluster(root=tmp_path, redis=private_redis, databases=pair)
    yield cluster
    cluster.close()
    if request.node.stash.get(FAILED, True):
        print(cluster.logs())
