"""Migrations take an empty Postgres database to head, and leave no drift from the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from harness.databases import PostgresFactory
from harness.processes import pipeline_env, run_migrations
from invoice_worker.models import Base as InvoiceBase
from order_service.extensions import db
from shared.config import Settings


def _drift(url: str, metadata: object) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))  # type: ignore[arg-type]
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_make_migrate_upgrades_empty_databases_to_head_without_drift(
    postgres: PostgresFactory, tmp_path: Path
) -> None:
    orders_url, invoices_url = postgres.empty("orders"), postgres.empty("invoices")
    env = pipeline_env(
        orders_url=orders_url, invoices_url=invoices_url, broker_url="memory://", var_dir=tmp_path
    )

    run_migrations(env)
    run_migrations(env)  # a second upgrade is a no-op

    assert {"orders", "order_lines", "outbox", "alembic_version"} <= _tables(orders_url)
    assert {"invoices", "processed_messages", "dead_letters", "alembic_version"} <= _tables(invoices_url)
    import order_service.models  # noqa: F401 - the tables register on db.metadata

    assert _drift(orders_url, db.metadata) == []
    assert _drift(invoices_url, InvoiceBase.metadata) == []


def test_migrations_also_build_the_embedded_sqlite_databases(sqlite_settings: Settings) -> None:
    env = pipeline_env(
        orders_url=sqlite_settings.orders_database_url,
        invoices_url=sqlite_settings.invoices_database_url,
        broker_url="filesystem://",
        var_dir=sqlite_settings.var_dir,
    )

    run_migrations(env)

    assert {"orders", "order_lines", "outbox"} <= _tables(sqlite_settings.orders_database_url)
    assert {"invoices", "processed_messages"} <= _tables(sqlite_settings.invoices_database_url)
