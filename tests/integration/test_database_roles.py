"""Least privilege in Postgres: deploy/postgres/roles.sql (what compose's init script runs) on throwaway
databases and roles. The owner roles migrate; the app roles read and write rows and can do nothing else,
not even connect to the other service's database; and an order goes round the whole loop as the app roles.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from flask_migrate import upgrade as flask_upgrade
from flask_outbox import InboxWorker, WorkerDatabase
from flask_outbox.publisher import publisher_for
from flask_outbox.relay import OutboxRelay, RelayPolicy
from sqlalchemy import URL, Table, make_url

from harness.outbox import Delivered, consumed
from invoice_worker import invoicing
from invoice_worker import models as invoice_models
from invoice_worker.migrations_cli import upgrade as invoices_upgrade
from order_service import create_app, invoice_answers
from order_service import models as order_models
from order_service.extensions import db
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ORDER_PLACED, ROUTES
from tests.conftest import TEST_POSTGRES_URL
from tests.support.orders import order_body

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "roles.sql"
SERVICES = ("orders", "invoices")
API_KEY = "osk_" + secrets.token_urlsafe(32)
SECRET_KEY = secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Service:
    """One service's database and its two roles, as compose's init script makes them."""

    database: str
    owner: str
    app: str
    password: str  # both roles'; trust authentication ignores it, the settings' check does not

    def url(self, role: str) -> str:
        admin = make_url(TEST_POSTGRES_URL)
        return admin.set(username=role, password=self.password, database=self.database).render_as_string(
            hide_password=False
        )

    def conninfo(self, role: str, database: str | None = None) -> str:
        url: URL = make_url(self.url(role)).set(drivername="postgresql", database=database or self.database)
        return url.render_as_string(hide_password=False)


def admin_conninfo() -> str:
    return make_url(TEST_POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)


def apply_roles(service: Service) -> None:
    """roles.sql through psql, as deploy/postgres/init-databases.sh runs it (passwords in the environment)."""
    admin = make_url(TEST_POSTGRES_URL)
    env = {
        **os.environ,
        "OWNER_PASSWORD": service.password,
        "APP_PASSWORD": service.password,
        **({"PGPASSWORD": admin.password} if admin.password else {}),
    }
    server = [
        "-h",
        admin.host or "127.0.0.1",
        "-p",
        str(admin.port or 5432),
        "-U",
        admin.username or "postgres",
    ]
    names = ["-v", f"db={service.database}", "-v", f"owner={service.owner}", "-v", f"app={service.app}"]
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *server, "-d", admin.database or "postgres", *names]
    subprocess.run([*argv, "-f", str(ROLES_SQL)], env=env, check=True, capture_output=True, timeout=60)


def migrate_as_owners(services: dict[str, Service], var_dir: Path) -> None:
    """Both schemas to head through the real migration commands, connected as the owner roles."""
    orders, invoices = services["orders"], services["invoices"]
    settings = Settings(orders_database_url=orders.url(orders.owner), var_dir=var_dir, secret_key=SECRET_KEY)
    app = create_app(settings)
    with app.app_context():
        flask_upgrade()
        db.engine.dispose()
    invoices_upgrade(invoices.url(invoices.owner))


@pytest.fixture(scope="module")
def services(run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    suffix = f"{run_id}_{uuid.uuid4().hex[:6]}"
    made = {
        name: Service(f"t_{suffix}_{name}", f"t_{suffix}_{name}_owner", f"t_{suffix}_{name}_app",
                      secrets.token_urlsafe(24))
        for name in SERVICES
    }  # fmt: skip
    try:
        for service in made.values():
            apply_roles(service)
        migrate_as_owners(made, tmp_path_factory.mktemp("roles") / "var")
        yield made
    finally:
        with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
            for service in made.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{service.database}" WITH (FORCE)')
            for service in made.values():
                for role in (service.app, service.owner):
                    conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize(
    ("name", "statement"),
    [
        ("orders", "CREATE TABLE sneaky (id int)"),
        ("orders", "DROP TABLE orders"),
        ("orders", "ALTER TABLE orders ADD COLUMN sneaky int"),
        ("orders", "TRUNCATE outbox"),
        ("orders", "CREATE TEMPORARY TABLE sneaky (id int)"),
        ("orders", "CREATE SCHEMA sneaky"),
        ("invoices", "DROP TABLE invoices"),
        ("invoices", "ALTER TABLE outbox DISABLE TRIGGER ALL"),
        ("invoices", "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    ],
)
def test_the_app_role_cannot_change_the_schema(
    services: dict[str, Service], name: str, statement: str
) -> None:
    service = services[name]
    with psycopg.connect(service.conninfo(service.app), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        powers = "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        assert conn.execute(powers).fetchone() == (False, False, False)


@pytest.mark.parametrize(("name", "other"), [("orders", "invoices"), ("invoices", "orders")])
def test_an_app_role_cannot_connect_to_the_other_services_database(
    services: dict[str, Service], name: str, other: str
) -> None:
    service = services[name]
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(service.conninfo(service.app, database=services[other].database)).close()


def test_tables_a_later_migration_adds_are_granted_to_the_app_role(services: dict[str, Service]) -> None:
    """ALTER DEFAULT PRIVILEGES: a migration needs no GRANT of its own (the sequence comes with it)."""
    service = services["orders"]
    with psycopg.connect(service.conninfo(service.owner), autocommit=True) as conn:
        conn.execute("CREATE TABLE later_things (id bigserial PRIMARY KEY, name text NOT NULL)")
    try:
        with psycopg.connect(service.conninfo(service.app), autocommit=True) as conn:
            conn.execute("INSERT INTO later_things (name) VALUES ('a'), ('b')")
            conn.execute("UPDATE later_things SET name = 'c' WHERE id = 1")
            conn.execute("DELETE FROM later_things WHERE id = 2")
            assert conn.execute("SELECT id, name FROM later_things").fetchall() == [(1, "c")]
    finally:
        with psycopg.connect(service.conninfo(service.owner), autocommit=True) as conn:
            conn.execute("DROP TABLE later_things")


def relay_once(url: str, table: Table, settings: Settings, name: str) -> int:
    """One relay's drain (claim, publish, mark, commit; partition leases as advisory locks) on ``url``."""
    database = WorkerDatabase(url)
    relay = OutboxRelay(database.engine, table, publisher_for(settings, ROUTES, name), RelayPolicy())
    try:
        return relay.drain()
    finally:
        relay.disconnect()
        relay.publisher.close()
        database.engine.dispose()


def consume(worker: InboxWorker, task: str, delivered: Delivered) -> None:
    """One message applied by the worker's consumer (inbox row and effect in one transaction)."""
    try:
        worker.consumer(task).apply(uuid.UUID(delivered.task_id), delivered.payload)
    finally:
        worker.database.engine.dispose()


def test_an_order_goes_round_the_loop_as_the_app_roles(
    services: dict[str, Service], redis_url: str, queue_prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    orders, invoices = services["orders"], services["invoices"]
    settings = Settings(
        orders_database_url=orders.url(orders.app),
        invoices_database_url=invoices.url(invoices.app),
        broker_url=redis_url,
        queue_prefix=queue_prefix,
        var_dir=tmp_path / "var",
        api_keys=API_KEY,
        secret_key=SECRET_KEY,
        message_signing_key=secrets.token_urlsafe(48),
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_KEY}"
        placed = client.post("/orders", json=order_body(), headers={"Idempotency-Key": str(uuid.uuid4())})
        assert placed.status_code == 201, placed.get_data(as_text=True)
        order_id = placed.get_json()["id"]

        assert relay_once(settings.orders_database_url, order_models.outbox, settings, "order_relay") == 1
        [order_placed] = consumed(redis_client, settings.queue(ROUTES[ORDER_PLACED].queue))
        invoice_worker = InboxWorker(  # as invoice_worker.celery_app builds it from the environment
            "invoice-worker",
            settings,
            settings.invoices_database_url,
            invoice_models.inbox,
            queue=ROUTES[ORDER_PLACED].queue,
        )
        invoice_worker.register(ROUTES[ORDER_PLACED], invoicing.HANDLER)
        consume(invoice_worker, ROUTES[ORDER_PLACED].task, order_placed)

        invoice_relay = relay_once(
            settings.invoices_database_url, invoice_models.outbox, settings, "invoice_relay"
        )
        assert invoice_relay == 1
        [answer] = consumed(redis_client, settings.queue(ROUTES[INVOICE_CREATED].queue))
        order_consumer = InboxWorker(  # as order_service.worker builds it from the environment
            "order-consumer",
            settings,
            settings.orders_database_url,
            order_models.inbox,
            queue=ROUTES[INVOICE_CREATED].queue,
        )
        order_consumer.register(ROUTES[INVOICE_CREATED], invoice_answers.HANDLER)
        consume(order_consumer, ROUTES[INVOICE_CREATED].task, answer)

        order = client.get(f"/orders/{order_id}").get_json()
        assert order["status"] == "invoiced", order
        assert order["invoice_number"]
    finally:
        with app.app_context():
            db.engine.dispose()
