"""WSGI entry point: ``gunicorn order_service.wsgi:app``."""

from __future__ import annotations

from order_service import create_app
from shared.config import Settings
from shared.logs import configure_logging

_settings = Settings()
configure_logging(_settings.log_level, _settings.log_format)
app = create_app(_settings)
