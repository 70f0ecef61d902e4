"""OpenTelemetry tracing across the outbox: one trace from ``POST /orders`` to the order turning invoiced.

Off by default, and then free: nothing of OpenTelemetry is imported or installed. On with
``OTEL_TRACES_EXPORTER``: ``otlp`` (OTLP over HTTP; endpoint and headers from the standard
``OTEL_EXPORTER_OTLP_*`` variables) or ``console`` (one JSON line per span on stdout).

The outbox breaks the call chain (the relay publishes later, from another process), so the
context travels in the outbox row: ``outbox_headers`` adds the current ``traceparent`` (and the
correlation id) to a message's headers when a receiver writes it; the relay restores it for each
message it publishes (``publish_span``) and puts its own span's context in the Celery message
headers, where the Celery instrumentation of the worker picks it up. The worker's task span, the
answer it writes, the invoice relay and the order consumer's span all join the request's trace.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import structlog

from flask_outbox.logs import CORRELATION_HEADER

__all__ = [
    "TRACE_HEADERS",
    "configure_tracing",
    "enabled",
    "instrument_celery",
    "instrument_flask",
    "outbox_headers",
    "publish_span",
]

log = structlog.get_logger(__name__)

TRACE_HEADERS = ("traceparent", "tracestate")

_state: dict[str, Any] = {"enabled": False, "service": None}


def enabled() -> bool:
    return bool(_state["enabled"])


def _exporter(kind: str) -> Any:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(service_name: str, exporter: str, *, redis: bool = True) -> bool:
    """Install a tracer provider and the SQLAlchemy (and Redis) instrumentations; once per process.

    ``exporter``: ``none`` (do nothing), ``console`` or ``otlp``. Flask and Celery are instrumented
    by their owners (``instrument_flask``, ``instrument_celery``), which need the app.
    """
    if exporter == "none" or _state["enabled"]:
        return enabled()
    from opentelemetry import trace
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    processor = SimpleSpanProcessor if exporter == "console" else BatchSpanProcessor
    provider.add_span_processor(processor(_exporter(exporter)))
    trace.set_tracer_provider(provider)
    SQLAlchemyInstrumentor().instrument()  # engines created from now on
    if redis:
        RedisInstrumentor().instrument()
    _state.update(enabled=True, service=service_name)
    log.info("tracing.enabled", service=service_name, exporter=exporter)
    return True


def instrument_flask(app: Any) -> None:
    if enabled():
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
            app, excluded_urls="healthz,readyz,metrics"
        )


def instrument_celery() -> None:
    """Consumer spans that continue the trace in the message headers (workers only: see ``publish_span``)."""
    if enabled():
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def outbox_headers(correlation_id: str | None) -> dict[str, str]:
    """Headers a receiver adds to an outbox message: the correlation id and the current trace context."""
    headers: dict[str, str] = {}
    if correlation_id:
        headers[CORRELATION_HEADER] = correlation_id
    if enabled():
        from opentelemetry import propagate

        propagate.inject(headers)
    return headers


@contextlib.contextmanager
def publish_span(topic: str, message_id: str, headers: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the headers to publish with: with tracing on, a producer span under the row's stored context.

    The relay is deliberately not Celery-instrumented: the instrumentation's publish span is
    only closed for tasks registered in the publishing process, which a by-name relay has none of.
    """
    if not enabled():
        yield dict(headers)
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract(headers)
    tracer = trace.get_tracer("flask_outbox")
    with tracer.start_as_current_span(
        f"publish {topic}",
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.operation.type": "publish", "messaging.message.id": message_id},
    ):
        carrier: MutableMapping[str, Any] = {k: v for k, v in headers.items() if k not in TRACE_HEADERS}
        propagate.inject(carrier)
        yield dict(carrier)
