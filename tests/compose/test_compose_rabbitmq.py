"""``make up BROKER=rabbitmq`` for real: the RabbitMQ shape (docker-compose.rabbitmq.yml on top).

One stack for the module (tests/compose/conftest.py, on the session's engine), tests in file order: healthy
and nothing of RabbitMQ published, orders invoiced exactly once across a SIGKILLed worker, the app's queues
quorum queues, and ``make down BROKER=rabbitmq`` last. What the default shape's module shows (database
roles, Redis ACL, metrics, Flower's password check) is the same here and is not repeated.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx
import pytest

from harness.waiting import wait_until
from tests.compose.engine import RABBITMQ_LONG_RUNNING, ROOT, Stack, run
from tests.compose.test_compose_up import (
    INVOICED_WITHIN,
    OrderStream,
    all_orders,
    exited,
    place_and_see_invoiced,
    psql,
    wait_until_none_placed,
)

pytestmark = pytest.mark.timeout(900)

BROKER_USERS = ("relay", "relay-2", "worker", "invoice-relay", "invoice-relay-2", "order-consumer", "flower")
"""The services whose BROKER_URL the override points at RabbitMQ; the API keeps Redis for its rate limits."""
VHOST = "order-outbox"


def broker_url(stack: Stack, service: str) -> tuple[str, str, str]:
    """(scheme, user@host:port, vhost) of a service's BROKER_URL, read inside its container; no password."""
    parts = urlsplit(stack.project.exec(service, "printenv", "BROKER_URL").strip())
    return parts.scheme, f"{parts.username}@{parts.hostname}:{parts.port}", parts.path


def rabbitmqctl(stack: Stack, *args: str) -> list[list[str]]:
    out = stack.project.exec("rabbitmq", "rabbitmqctl", "-q", *args, "--no-table-headers", timeout=90)
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def test_every_service_is_healthy_and_rabbitmq_publishes_no_port(rabbitmq_stack: Stack) -> None:
    stack = rabbitmq_stack
    containers = {c.service: c for c in stack.project.containers()}
    assert set(containers) == {*RABBITMQ_LONG_RUNNING, "migrate"}
    for service in RABBITMQ_LONG_RUNNING:
        assert (containers[service].status, containers[service].health) == ("running", "healthy"), service
    assert (containers["migrate"].status, containers["migrate"].exit_code) == ("exited", 0)
    assert {service for service, c in containers.items() if c.published} == {"api"}
    assert containers["rabbitmq"].published == ()
    assert containers["rabbitmq"].networks == ("backend",)

    # The management UI does listen (15672): it is unpublished, not absent. Its only user is `app`: no guest.
    listeners = stack.project.exec("rabbitmq", "rabbitmq-diagnostics", "-q", "listeners", timeout=90)
    assert "port: 15672, protocol: http" in listeners
    assert [row[0] for row in rabbitmqctl(stack, "list_users")] == ["app"]

    for service in BROKER_USERS:
        assert broker_url(stack, service) == ("amqp", "app@rabbitmq:5672", f"/{VHOST}"), service
    assert broker_url(stack, "api") == ("redis", "app@redis:6379", "/0"), "rate limits stay on Redis"


def test_orders_are_invoiced_exactly_once_across_a_killed_worker(rabbitmq_stack: Stack) -> None:
    stack = rabbitmq_stack
    project = stack.project
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        place_and_see_invoiced(stack, client, count=10, seed=21)

    # SIGKILLed while orders flow: its reserved messages go back to the queue as soon as its connection drops.
    stream = OrderStream(stack, per_second=4)
    stream.start()
    try:
        time.sleep(3)
        project.run("kill", "-s", "KILL", "worker", timeout=60)
        wait_until(lambda: exited(project, ("worker",)), timeout=30, message="the SIGKILLed worker exited")
        time.sleep(2)
        project.run("up", "-d", "--no-build", "--no-deps", "worker", timeout=120)
        time.sleep(3)
    finally:
        stream.stop()
    assert not stream.errors, stream.errors
    assert stream.placed >= 10

    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        stack.timings["killed worker: last order invoiced"] = wait_until_none_placed(
            stack, client, INVOICED_WITHIN
        )
        invoiced = all_orders(stack, client, "invoiced")
    accepted = set(stack.accepted)
    assert len(accepted) == len(stack.accepted)
    assert set(invoiced) == accepted
    invoice_orders = [row[0] for row in psql(stack, "invoices", "SELECT order_id FROM invoices")]
    assert sorted(invoice_orders) == sorted(accepted), "one invoice per accepted order and nothing else"


def test_the_apps_queues_are_quorum_queues(rabbitmq_stack: Stack) -> None:
    queues = rabbitmqctl(rabbitmq_stack, "list_queues", "-p", VHOST, "name", "type", "durable", "auto_delete")
    types = {name: kind for name, kind, _, _ in queues}
    assert types["invoices"] == types["orders"] == "quorum"
    # Every durable queue (the task queues, Celery's delayed-delivery ones) is a quorum queue; the classic
    # ones are Celery's per-process control and event queues, deleted with their consumer.
    for name, kind, durable, auto_delete in queues:
        assert kind == "quorum" or (durable, auto_delete) == ("false", "true"), name


def test_make_down_with_the_same_broker_stops_everything(rabbitmq_stack: Stack) -> None:
    project = rabbitmq_stack.project
    run(
        [
            "make", "-s", "-C", str(ROOT), "down", "BROKER=rabbitmq", f"COMPOSE_PROJECT={project.name}",
            f"ENV_FILE={project.env_file}",
        ],
        env=project.engine.env(),
        timeout=180,
    )  # fmt: skip
    assert project.containers() == []
    assert len(project.volumes()) == 3, "make down keeps the data volumes (Postgres, Redis, RabbitMQ)"
    project.down()
    assert project.volumes() == []
