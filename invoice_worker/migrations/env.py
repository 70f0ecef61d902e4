"""Alembic environment for the invoices database (``python -m invoice_worker migrate``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from invoice_worker.models import Base

config = context.config


def _database_url() -> str:
    """The URL invoice_worker.migrations_cli puts in the alembic config."""
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set in the alembic config")
    return url


url = _database_url()


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
