"""Unit tests: SQLite files in a temporary folder, no network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from invoice_worker.database import InvoiceDatabase
from invoice_worker.models import Base as InvoiceBase
from order_service import create_app
from order_service.extensions import db
from shared.config import Settings


@pytest.fixture
def app(sqlite_settings: Settings) -> Iterator[Flask]:
    app = create_app(sqlite_settings)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def invoice_db(sqlite_settings: Settings) -> Iterator[InvoiceDatabase]:
    database = InvoiceDatabase(sqlite_settings)
    InvoiceBase.metadata.create_all(database.engine)
    yield database
    database.engine.dispose()
