"""gunicorn's hooks for the API: ``gunicorn -c python:order_service.gunicorn_conf order_service.wsgi:app``.

The API's ``/metrics`` is not on its public port: the master serves the sum of its workers' metrics
on ``METRICS_PORT``, a port compose does not publish, as the relays and workers do.
"""

from __future__ import annotations

from typing import Any

import structlog
from flask_outbox import enable_multiprocess, serve_metrics

from shared.config import Settings

log = structlog.get_logger(__name__)


def on_starting(_server: Any) -> None:
    """Before the workers fork: they inherit the metrics folder the master will read."""
    enable_multiprocess("api")


def when_ready(_server: Any) -> None:
    port = Settings().metrics_port
    try:
        running = serve_metrics(port)
    except OSError as exc:
        log.error("api.metrics_unavailable", port=port, error=str(exc))
        return
    log.info("api.metrics_serving", port=running.port)
