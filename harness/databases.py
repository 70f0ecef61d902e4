"""Throwaway Postgres databases, cloned from migrated templates so each costs milliseconds."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
from flask_migrate import upgrade as flask_upgrade
from sqlalchemy import make_url

from invoice_worker.migrations_cli import upgrade as invoices_upgrade
from order_service import create_app
from shared.config import Settings


@dataclass
class DatabasePair:
    orders_url: str
    invoices_url: str


@dataclass
class PostgresFactory:
    """Creates databases on one server; every one it made is dropped by ``close``."""

    admin_url: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    _made: list[str] = field(default_factory=list)
    _templates: DatabasePair | None = None

    def _conninfo(self, database: str | None = None) -> str:
        url = make_url(self.admin_url).set(drivername="postgresql")
        if database:
            url = url.set(database=database)
        return url.render_as_string(hide_password=False)

    def _url(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def _create(self, name: str, template: str | None = None) -> str:
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        self._made.append(name)
        return self._url(name)

    def templates(self) -> DatabasePair:
        """Both schemas migrated to head once per run, through the real migration commands."""
        if self._templates is None:
            orders = self._create(f"t_{self.run_id}_orders_tmpl")
            invoices = self._create(f"t_{self.run_id}_invoices_tmpl")
            settings = Settings(orders_database_url=orders, invoices_database_url=invoices)
            app = create_app(settings)
            with app.app_context():
                flask_upgrade()
                from order_service.extensions import db

                db.engine.dispose()
            invoices_upgrade(invoices)
            self._templates = DatabasePair(orders, invoices)
        return self._templates

    def fresh_pair(self) -> DatabasePair:
        """An empty, migrated orders database and invoices database for one test."""
        templates = self.templates()
        suffix = uuid.uuid4().hex[:8]
        return DatabasePair(
            orders_url=self._create(
                f"t_{self.run_id}_{suffix}_orders", make_url(templates.orders_url).database
            ),
            invoices_url=self._create(
                f"t_{self.run_id}_{suffix}_invoices", make_url(templates.invoices_url).database
            ),
        )

    def empty(self, label: str) -> str:
        return self._create(f"t_{self.run_id}_{uuid.uuid4().hex[:8]}_{label}")

    def close(self) -> None:
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            for name in reversed(self._made):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._made.clear()
