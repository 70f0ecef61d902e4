"""WSGI entry point: ``gunicorn order_service.wsgi:app``.

Metrics go to the process group's multiprocess folder before any metric exists, so every
gunicorn worker's counts add up in each scrape (``flask_outbox.metrics``).
"""

from __future__ import annotations

from flask_outbox import configure_logging, enable_multiprocess

enable_multiprocess("api")


from order_service import create_app  # noqa: E402 - after the metrics mode is chosen
from order_service.dashboard import require_secret_key  # noqa: E402
from shared.config import Settings  # noqa: E402

_settings = Settings()
configure_logging(_settings.log_level, _settings.log_format)
require_secret_key(_settings)
app = create_app(_settings)
