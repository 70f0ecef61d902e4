"""Structured logging for every process: JSON lines in production, readable lines in a terminal."""

from __future__ import annotations

import logging
import os
import re
import sys

import structlog

__all__ = [
    "CORRELATION_HEADER",
    "CORRELATION_ID",
    "bind_correlation",
    "configure_logging",
    "correlation_id",
    "valid_correlation_id",
]

CORRELATION_ID = "correlation_id"
"""The log field that follows one request through every process."""
CORRELATION_HEADER = "x_request_id"
"""The outbox and Celery message header that carries it (Celery's own ``correlation_id`` is the task id)."""
_VALID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def valid_correlation_id(value: str | None) -> str:
    """``value`` if it is a sane id (a client's ``X-Request-ID``), else a new one: no log injection."""
    if value and _VALID.fullmatch(value):
        return value
    return os.urandom(16).hex()  # as random as uuid4().hex, a sixth of its cost


def bind_correlation(value: str | None) -> None:
    """Every log line of this context (request, task) carries ``correlation_id`` from now on."""
    if value:
        structlog.contextvars.bind_contextvars(**{CORRELATION_ID: value})


def correlation_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get(CORRELATION_ID)
    return str(value) if value else None


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and the standard library (Celery, gunicorn, SQLAlchemy) through one renderer."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.processors.format_exc_info
            if fmt == "json"
            else structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a cached module-level logger ignores a later reconfiguration (and the tests'
        # structlog.testing.capture_logs); resolving it per call costs a few microseconds.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Records from the standard library (Celery, kombu) carry exc_info as a tuple: render the
            # traceback as text in JSON, as structlog's own lines are.
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if fmt == "json" else []),
                renderer,
            ],
            foreign_pre_chain=shared_processors,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
