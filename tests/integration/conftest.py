"""Integration tests: the real Postgres and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from invoice_worker.database import InvoiceDatabase
from order_service import create_app
from order_service.extensions import db
from shared.config import Settings


@pytest.fixture
def pg_app(pg_settings: Settings) -> Iterator[Flask]:
    app = create_app(pg_settings)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def pg_invoice_db(pg_settings: Settings) -> Iterator[InvoiceDatabase]:
    database = InvoiceDatabase(pg_settings)
    yield database
    database.engine.dispose()
