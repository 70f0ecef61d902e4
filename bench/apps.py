"""Bench-only WSGI variants of the order API, the yardsticks the outbox is measured against.

``gunicorn bench.apps:bare`` places orders with no outbox receiver (the order insert alone);
``gunicorn bench.apps:dual_write`` is the UNSAFE dual write the outbox replaces: commit the order,
then ``send_task`` from the request. Neither is a product mode: they exist only to price the outbox.
Each gunicorn process loads one variant; which one is built is chosen by the attribute gunicorn asks for.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from flask import Flask, Response, g
from sqlalchemy.orm import Session

from order_service import create_app
from order_service.models import Order
from order_service.receivers import order_placed_message, request_invoice
from order_service.signals import order_placed
from shared.broker import publishing_app
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES, SCHEMA_VERSION_HEADER
from shared.logs import configure_logging

__all__ = ["build_bare", "build_dual_write"]

_VIEW = "orders.create_order"


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def build_bare(settings: Settings) -> Flask:
    """The real app with the outbox receiver disconnected: what placing an order costs without it."""
    app = create_app(settings)
    order_placed.disconnect(request_invoice)
    return app


def _remember_order(sender: Any, *, order: Order, session: Session, **_: Any) -> None:
    """Keep the flushed order for the view wrapper; writes nothing."""
    g.bench_order = order


def _publish_after_commit(celery: Celery, settings: Settings, response: Response) -> None:
    order: Order | None = g.pop("bench_order", None)
    if response.status_code != 201 or order is None:
        return
    message = order_placed_message(order)
    route = ROUTES[ORDER_PLACED]
    celery.send_task(
        route.task,
        kwargs={"payload": message.to_payload()},
        task_id=str(uuid.uuid4()),
        queue=settings.queue(route.queue),
        headers={SCHEMA_VERSION_HEADER: message.schema_version, "order_id": message.order_id},
    )


def build_dual_write(settings: Settings) -> Flask:
    """Commit the order, then publish from the request: a crash or broker fault in between loses it."""
    app = build_bare(settings)
    order_placed.connect(_remember_order, weak=False)
    celery = publishing_app(settings, "bench_dual_write")
    view = app.view_functions[_VIEW]

    def create_order_then_publish(**kwargs: Any) -> Response:
        response: Response = view(**kwargs)
        _publish_after_commit(celery, settings, response)
        return response

    app.view_functions[_VIEW] = create_order_then_publish
    return app


def __getattr__(name: str) -> Flask:
    """Build only the variant gunicorn imports (``bench.apps:bare`` or ``bench.apps:dual_write``)."""
    builders = {"bare": build_bare, "dual_write": build_dual_write}
    if name not in builders:
        raise AttributeError(name)
    app = builders[name](_settings())
    globals()[name] = app
    return app
