"""Alembic environment for the orders database, run through Flask-Migrate (``flask db upgrade``)."""

from __future__ import annotations

from alembic import context
from flask import current_app

from order_service import models  # noqa: F401 - registers the tables on the metadata

db = current_app.extensions["migrate"].db
config = context.config


def run_migrations_offline() -> None:
    context.configure(url=str(db.engine.url), target_metadata=db.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with db.engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=db.metadata,
            **current_app.extensions["migrate"].configure_args,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # The app's engine carries the API's statement and idle-in-transaction timeouts; a
                # migration may take longer, in a statement or between two (a data migration's Python).
                # LOCAL: the pooled connection keeps its timeouts after this transaction.
                connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
                connection.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
