"""The order service: HTTP API that writes orders and their outbox messages in one transaction."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from order_service.api import bp
from order_service.extensions import db, migrate
from order_service.problems import register_error_handlers
from order_service.receivers import connect_receivers
from shared.config import Settings
from shared.db import engine_options, install_sqlite_pragmas

__all__ = ["MIGRATIONS", "create_app"]

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; with no settings they are read from the environment (embedded mode by default)."""
    settings = settings or Settings()
    settings.ensure_var_dir()
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=settings.orders_database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings.orders_database_url, settings.database_pool_size),
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
    )
    app.extensions["order_service.settings"] = settings
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS))
    with app.app_context():
        install_sqlite_pragmas(db.engine)
    connect_receivers()
    app.register_blueprint(bp)
    register_error_handlers(app)
    return app
