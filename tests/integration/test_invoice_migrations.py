"""The invoices schema: empty -> head with no drift, on Postgres and SQLite, and back down to 0002."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from harness.databases import PostgresFactory
from invoice_worker.migrations_cli import alembic_config, upgrade
from invoice_worker.models import Base
from shared.config import Settings


def _drift_and_tables(url: str) -> tuple[list[object], set[str], set[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            drift = list(compare_metadata(context, Base.metadata))
            tables = set(inspect(conn).get_table_names())
            triggers: set[str] = set()
            if conn.dialect.name == "postgresql":
                triggers = set(conn.scalars(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")))
        return drift, tables, triggers
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_invoice_migrations_reach_head_without_drift_and_downgrade_to_0002(
    backend: str, postgres: PostgresFactory, sqlite_settings: Settings
) -> None:
    url = postgres.empty("invoices") if backend == "postgresql" else sqlite_settings.invoices_database_url

    upgrade(url)
    drift, tables, triggers = _drift_and_tables(url)
    assert drift == []
    assert {"invoices", "processed_messages", "message_deliveries", "dead_letters", "outbox"} <= tables
    assert triggers == ({"outbox_notify"} if backend == "postgresql" else set())

    command.downgrade(alembic_config(url), "0002")
    _, tables, triggers = _drift_and_tables(url)
    assert "outbox" not in tables
    assert triggers == set()
    upgrade(url)
    assert _drift_and_tables(url)[0] == []
