"""``docker compose up`` for real: the production shape built, started and driven through the API port only.

The module's tests share one stack (tests/compose/conftest.py) and run in file order: healthy first, then
orders, metrics, restarts and kills while orders flow, and ``make down`` last. Everything a client does goes
through the published API port; the databases are read with ``compose exec`` into the postgres container.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from harness.waiting import wait_until
from tests.compose.engine import (
    LONG_RUNNING,
    ONE_SHOT,
    ROOT,
    ComposeProject,
    Container,
    EngineError,
    Stack,
    run,
)
from tests.support.orders import expected_total, order_body

# A cold run (debootstrap, image builds) is bounded inside the fixture, call by call; this bounds the whole.
pytestmark = pytest.mark.timeout(900)

PIPELINE = ("worker", "relay", "relay-2", "invoice-relay", "invoice-relay-2", "order-consumer")
"""The containers restarted and SIGKILLed while orders flow (every process between the API and Postgres)."""
METRIC_LINE = re.compile(r"^(?P<name>[a-z_]+)(?:\{[^}]*\})? (?P<value>\S+)$", re.MULTILINE)
# The broker's visibility timeout (60 s) plus the worker's sweep (10 s) bounds a SIGKILLed worker's
# prefetched messages coming back; the rest is headroom for a loaded CI machine.
INVOICED_WITHIN = 180.0


def headers(stack: Stack, idempotency_key: str | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {stack.api_key}",
        "Idempotency-Key": idempotency_key or str(uuid.uuid4()),
    }


def request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One API call, waiting out 429s (the per-key rate limit) within a bound."""
    deadline = time.monotonic() + 60
    while True:
        response = client.request(method, url, **kwargs)
        if response.status_code != 429 or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))


def place(stack: Stack, client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST one order; a dropped connection is retried with the same Idempotency-Key (one order at most)."""
    key = str(uuid.uuid4())
    for _ in range(10):
        try:
            response = request(client, "POST", "/orders", json=body, headers=headers(stack, key))
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        stack.accepted.append(created["id"])
        return created
    raise AssertionError("the API did not answer POST /orders ten times in a row")


def metrics(text: str) -> dict[str, float]:
    """Sum of each sample name's values (labels folded) in a Prometheus text exposition."""
    found: dict[str, float] = {}
    for match in METRIC_LINE.finditer(text):
        found[match["name"]] = found.get(match["name"], 0.0) + float(match["value"])
    return found


def scrape_inside(stack: Stack, service: str, port: int) -> str:
    """/metrics of a container that publishes no port, fetched from inside it with its own Python."""
    url = f"http://127.0.0.1:{port}/metrics"
    fetch = f"urllib.request.urlopen({url!r}, timeout=5).read().decode()"
    code = f"import sys, urllib.request; sys.stdout.write({fetch})"
    return stack.project.exec(service, "python", "-c", code)


def psql(stack: Stack, database: str, sql: str) -> list[list[str]]:
    """As the bootstrap superuser, over the container's socket: the operator's way in, no service's."""
    out = stack.project.exec(
        "postgres", "psql", "-U", "postgres", "-d", database, "-At", "-F", "|", "-c", sql
    )
    return [line.split("|") for line in out.splitlines() if line]


def all_orders(stack: Stack, client: httpx.Client, status: str) -> dict[str, dict[str, Any]]:
    """Every order in one status, paged through GET /orders."""
    found: dict[str, dict[str, Any]] = {}
    params: dict[str, str | int] = {"status": status, "limit": 200}
    while True:
        response = request(client, "GET", "/orders", params=params, headers=headers(stack))
        assert response.status_code == 200, response.text
        page = response.json()
        found.update({order["id"]: order for order in page["data"]})
        if page["next_cursor"] is None:
            return found
        params["cursor"] = page["next_cursor"]


def wait_until_none_placed(stack: Stack, client: httpx.Client, timeout: float) -> float:
    start = time.monotonic()
    while True:
        response = request(
            client, "GET", "/orders", params={"status": "placed", "limit": 5}, headers=headers(stack)
        )
        assert response.status_code == 200, response.text
        if not response.json()["data"]:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pending = [order["id"] for order in response.json()["data"]]
            raise AssertionError(
                f"orders still placed after {timeout:.0f} s, e.g. {pending}:\n{stack.project.logs(*PIPELINE)}"
            )
        time.sleep(1.0)


def test_every_service_is_healthy_and_only_the_api_publishes_a_port(stack: Stack) -> None:
    containers = {c.service: c for c in stack.project.containers()}
    assert set(containers) == {*LONG_RUNNING, "migrate"}
    for service in LONG_RUNNING:
        assert (containers[service].status, containers[service].health) == ("running", "healthy"), service
    assert (containers["migrate"].status, containers["migrate"].exit_code) == ("exited", 0)
    published = {service: c.published for service, c in containers.items() if c.published}
    assert set(published) == {"api"}, "Postgres and Redis must stay on the compose network"
    on_edge = {service for service, c in containers.items() if "edge" in c.networks}
    assert on_edge == {"api"}, "only the API is reachable from outside the internal backend network"
    assert all("backend" in c.networks for c in containers.values())
    assert any(
        binding.endswith(f":{stack.base_url.rsplit(':', 1)[1]}->8000/tcp") for binding in published["api"]
    )


def place_and_see_invoiced(stack: Stack, client: httpx.Client, count: int, seed: int) -> None:
    """Place ``count`` orders and read each one back until it is invoiced with its total (bounded)."""
    rng = random.Random(seed)
    bodies = {place(stack, client, body)["id"]: body for body in (order_body(rng) for _ in range(count))}
    pending = set(bodies)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for order_id in sorted(pending):
            response = request(client, "GET", f"/orders/{order_id}", headers=headers(stack))
            assert response.status_code == 200, response.text
            order = response.json()
            if order["status"] == "invoiced":
                assert order["invoice_number"], order
                assert order["amount_total"] == expected_total(bodies[order_id])
                pending.discard(order_id)
        time.sleep(0.5)
    assert not pending, f"not invoiced within 60 s: {sorted(pending)}\n{stack.project.logs(*PIPELINE)}"


def test_orders_placed_through_the_api_port_come_back_invoiced(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        unauthenticated = client.post("/orders", json=order_body())
        assert unauthenticated.status_code == 401
        place_and_see_invoiced(stack, client, count=20, seed=11)


def test_the_api_and_relays_serve_metrics_on_unpublished_ports(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        place_and_see_invoiced(stack, client, count=5, seed=13)  # invoiced: both legs went round
        assert client.get("/metrics").status_code in {401, 404}, "no metrics on the public port"
    placed = len(stack.accepted)
    # No published port: scraped from inside the containers (METRICS_PORT, 9101, in each).
    assert metrics(scrape_inside(stack, "api", 9101))["orders_placed_total"] >= placed
    # The two relays of each kind publish every message between them (each its partitions' share).
    for relay in ("relay", "invoice-relay"):
        published = [
            metrics(scrape_inside(stack, name, 9101))["outbox_relay_published_total"]
            for name in (relay, f"{relay}-2")
        ]
        assert sum(published) >= placed, (relay, published)
    for worker in ("worker", "order-consumer"):
        try:
            scraped = metrics(scrape_inside(stack, worker, 9101))
        except EngineError as exc:
            if "Connection refused" not in str(exc):
                raise
            stack.notes.append(f"{worker}: nothing listens on METRICS_PORT (9101), not scraped")
        else:
            assert scraped, worker


SCHEMA_CHANGES = """
import os, sqlalchemy
engine = sqlalchemy.create_engine(os.environ[{variable!r}])
changes = ["CREATE TABLE sneaky (id int)", "DROP TABLE {table}", "ALTER TABLE outbox ADD COLUMN sneaky int"]
for statement in changes:
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    except sqlalchemy.exc.ProgrammingError as exc:
        print(exc.orig.sqlstate)
    else:
        print("allowed")
other = engine.url.set(database={other!r})
try:
    sqlalchemy.create_engine(other).connect().close()
except sqlalchemy.exc.OperationalError as exc:
    print("permission denied for database" in str(exc))
else:
    print("connected")
"""
"""Run in a service's container with its own URL: every schema change, then the other service's database."""


@pytest.mark.parametrize(
    ("service", "variable", "table", "other"),
    [
        ("relay", "ORDERS_DATABASE_URL", "orders", "invoices"),
        ("worker", "INVOICES_DATABASE_URL", "invoices", "orders"),
    ],
)
def test_the_services_connect_as_app_roles_that_cannot_change_the_schema(
    stack: Stack, service: str, variable: str, table: str, other: str
) -> None:
    code = SCHEMA_CHANGES.format(variable=variable, table=table, other=other)
    assert stack.project.exec(service, "python", "-c", code).split() == ["42501", "42501", "42501", "True"]
    sessions = psql(
        stack,
        "postgres",
        "SELECT DISTINCT datname, usename FROM pg_stat_activity "
        "WHERE datname IN ('orders', 'invoices') AND backend_type = 'client backend'",
    )
    assert {tuple(row) for row in sessions} == {("orders", "orders_app"), ("invoices", "invoices_app")}


REDIS_ACCESS = """
import os, redis
def attempt(client, *command):
    try:
        client.execute_command(*command)
    except redis.RedisError as exc:
        return type(exc).__name__
    return "allowed"
anonymous = redis.Redis(host="redis")
app = redis.Redis.from_url(os.environ["BROKER_URL"])
print(attempt(anonymous, "PING"), attempt(anonymous, "LPUSH", "invoices", "forged"))
print(attempt(app, "PING"), attempt(app, "FLUSHALL"), attempt(app, "CONFIG", "GET", "*"))
"""
"""From the API's container (the internet-facing one): Redis without credentials, then as the ACL user."""


def test_redis_refuses_unauthenticated_clients_and_dangerous_commands(stack: Stack) -> None:
    anonymous, app = stack.project.exec("api", "python", "-c", REDIS_ACCESS).splitlines()
    assert anonymous.split() == ["AuthenticationError", "AuthenticationError"], "NOAUTH, nothing forged"
    assert app.split() == ["allowed", "NoPermissionError", "NoPermissionError"]


def test_flower_refuses_to_start_with_a_weak_password(stack: Stack) -> None:
    weak = stack.project.run(
        "run",
        "--rm",
        "--no-deps",
        "-e",
        "FLOWER_BASIC_AUTH=ops:change-me",
        "flower",
        timeout=120,
        check=False,
    )
    assert weak.returncode == 2, weak.stdout + weak.stderr
    assert "the password of FLOWER_BASIC_AUTH entry 1 is a placeholder" in weak.stderr + weak.stdout
    assert "change-me" not in weak.stderr + weak.stdout


class OrderStream(threading.Thread):
    """Places orders at a steady rate until stopped; records failures instead of raising in the thread."""

    def __init__(self, stack: Stack, per_second: float) -> None:
        super().__init__(name="order-stream", daemon=True)
        self.stack = stack
        self.interval = 1.0 / per_second
        self.stopped = threading.Event()
        self.placed = 0
        self.errors: list[str] = []

    def run(self) -> None:
        rng = random.Random(12)
        with httpx.Client(base_url=self.stack.base_url, timeout=30) as client:
            while not self.stopped.is_set():
                try:
                    place(self.stack, client, order_body(rng))
                    self.placed += 1
                except (AssertionError, httpx.HTTPError) as exc:
                    self.errors.append(repr(exc))
                self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the order stream did not stop"


def exited(project: ComposeProject, services: tuple[str, ...]) -> list[Container]:
    """The services' containers once all of them have exited, else an empty list."""
    found = [c for c in project.containers() if c.service in services and c.status == "exited"]
    return found if len(found) == len(services) else []


def test_restarting_and_killing_workers_and_relays_while_orders_flow_loses_nothing(stack: Stack) -> None:
    project = stack.project
    stream = OrderStream(stack, per_second=4)
    stream.start()
    try:
        time.sleep(3)
        project.run("restart", *PIPELINE, timeout=180)  # SIGTERM, stop_grace_period, start
        time.sleep(3)
        project.run("kill", "-s", "KILL", *PIPELINE, timeout=60)
        killed = wait_until(
            lambda: exited(project, PIPELINE), timeout=30, message="every SIGKILLed container exited"
        )
        assert sorted((c.service, c.exit_code) for c in killed) == sorted((s, 137) for s in PIPELINE)
        time.sleep(2)  # orders keep arriving with no relay or worker running: they wait in the outbox
        project.run("up", "-d", "--no-build", "--no-deps", *PIPELINE, timeout=120)
        time.sleep(3)
    finally:
        stream.stop()
    assert not stream.errors, stream.errors
    assert stream.placed >= 20

    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        stack.timings["restarts: last order invoiced"] = wait_until_none_placed(
            stack, client, INVOICED_WITHIN
        )
        invoiced = all_orders(stack, client, "invoiced")
    accepted = set(stack.accepted)
    assert len(accepted) == len(stack.accepted), "the API gave one id to two orders"
    assert set(invoiced) == accepted, "every accepted order, and only those, reads invoiced"
    assert all(order["invoice_number"] for order in invoiced.values())

    # Exactly once, from the database itself: one invoice per accepted order, none for anything else.
    invoice_orders = [row[0] for row in psql(stack, "invoices", "SELECT order_id FROM invoices")]
    assert len(invoice_orders) == len(accepted)
    assert set(invoice_orders) == accepted
    [[placed, total]] = psql(
        stack, "orders", "SELECT count(*) FILTER (WHERE status <> 'invoiced'), count(*) FROM orders"
    )
    assert (int(placed), int(total)) == (0, len(accepted))

    # The restarted processes come back healthy (a Celery worker's first check runs after its 30 s interval).
    project.wait_until_healthy(LONG_RUNNING, ONE_SHOT, timeout=180)


def test_make_down_stops_everything_and_down_v_removes_the_volumes(stack: Stack) -> None:
    project = stack.project
    run(
        [
            "make",
            "-s",
            "-C",
            str(ROOT),
            "down",
            f"COMPOSE_PROJECT={project.name}",
            f"ENV_FILE={project.env_file}",
        ],
        env=project.engine.env(),
        timeout=180,
    )
    assert project.containers() == []
    assert len(project.volumes()) == 2, "make down keeps the data volumes"
    project.down()
    assert project.volumes() == []
