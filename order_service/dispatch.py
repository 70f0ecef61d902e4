"""The API publishes ``order.placed`` itself, right after the order commits (``flask_outbox.dispatch``).

On a Redis broker with ``OUTBOX_DISPATCH_AFTER_COMMIT`` on (the default), the request that placed an
order pushes its message to the invoice queue once the transaction commits, the way a plain
``.delay()`` after ``commit()`` would; the relay (``order_service.relay``) marks it published from
the dispatch log and publishes any message the API did not dispatch within
``OUTBOX_DISPATCH_GRACE_SECONDS``. ``order.placed`` is one message per order, so giving up the relay's
per-aggregate publish order costs nothing here.
"""

from __future__ import annotations

from flask import Flask, current_app, has_app_context
from flask_outbox.broker import publishing_app
from flask_outbox.dispatch import AfterCommitDispatcher, Handover

from order_service.extensions import AppState
from order_service.metrics import api_metrics
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES

__all__ = ["DISPATCH_LOG", "dispatcher", "init_dispatch"]

DISPATCH_LOG = "orders"
"""The dispatch log's name, shared by the API (writer) and the order relay (marker)."""

_DISPATCHER: AppState[AfterCommitDispatcher | None] = AppState("order_service.dispatcher")


def init_dispatch(app: Flask, settings: Settings) -> None:
    on_redis = settings.broker_url.startswith(("redis://", "rediss://"))
    dispatcher = None
    if settings.outbox_dispatch_after_commit and on_redis:
        dispatcher = AfterCommitDispatcher.from_url(
            publishing_app(settings, "order_api"),
            settings.broker_url,
            ROUTES,
            queue_prefix=settings.queue_prefix,
            table=DISPATCH_LOG,
            topics=frozenset({ORDER_PLACED}),
            grace=settings.outbox_dispatch_grace_seconds,
            handover=Handover(
                queue_limit=settings.outbox_dispatch_queue_limit,
                behind_seconds=settings.outbox_dispatch_behind_seconds,
                hold_seconds=settings.outbox_dispatch_handover_seconds,
            ),
            on_handover=api_metrics().dispatch_handovers.inc,
        )
    _DISPATCHER.init_app(app, dispatcher)


def dispatcher() -> AfterCommitDispatcher | None:
    """The current app's dispatcher; ``None`` (the relay publishes everything) outside an app."""
    if not has_app_context():
        return None
    found: AfterCommitDispatcher | None = current_app.extensions.get(_DISPATCHER.name)
    return found
