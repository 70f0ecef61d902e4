"""Unit tests: SQLite files in a temporary folder, no network.

The app is configured with one known API key and ``client`` sends it, as any real client must.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from invoice_worker.database import InvoiceDatabase
from invoice_worker.models import Base as InvoiceBase
from order_service import create_app
from order_service.extensions import db
from order_service.models import IdempotencyKey, Order, OrderLine, outbox
from shared.config import Settings

API_KEY = "osk_unit-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def api_settings(sqlite_settings: Settings) -> Settings:
    """Embedded-mode settings with a known API key (instead of a generated dev key)."""
    return sqlite_settings.model_copy(update={"api_keys": API_KEY})


def app_on_sqlite(settings: Settings) -> Iterator[Flask]:
    """An app with its tables created on its SQLite file; its engine is disposed afterwards."""
    app = create_app(settings)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app(api_settings: Settings) -> Iterator[Flask]:
    yield from app_on_sqlite(api_settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    return client


@pytest.fixture
def invoice_db(sqlite_settings: Settings) -> Iterator[InvoiceDatabase]:
    database = InvoiceDatabase(sqlite_settings)
    InvoiceBase.metadata.create_all(database.engine)
    yield database
    database.engine.dispose()


@pytest.fixture
def row_counts(app: Flask) -> Callable[[], dict[str, int]]:
    """Rows in every table a POST /orders could write."""

    def count() -> dict[str, int]:
        with app.app_context():
            return {
                table.name: db.session.scalar(select(func.count()).select_from(table)) or 0
                for table in (Order.__table__, OrderLine.__table__, outbox, IdempotencyKey.__table__)
            }

    return count
