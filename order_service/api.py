"""HTTP endpoints of the order service; their OpenAPI operations come from the pydantic models."""

from __future__ import annotations

import uuid

import structlog
from flask import Response, current_app, g, request
from flask_openapi3.blueprint import APIBlueprint
from flask_openapi3.models.tag import Tag
from sqlalchemy import Select, select, text, tuple_
from werkzeug.exceptions import NotFound

from order_service import cursor, idempotency
from order_service.extensions import SETTINGS, db
from order_service.metrics import api_metrics
from order_service.models import Order
from order_service.parameters import reject_repeated
from order_service.problems import problem_responses
from order_service.schemas import (
    IdempotencyHeader,
    OrderCreated,
    OrderIn,
    OrderOut,
    OrderPage,
    OrderPath,
    OrderQuery,
    Status,
)
from order_service.services import LineRequest, PlaceOrder, place_order

__all__ = ["bp", "health"]

log = structlog.get_logger(__name__)

_orders_tag = Tag(name="orders", description="Place and read orders")
bp = APIBlueprint(
    "orders",
    __name__,
    abp_tags=[_orders_tag],
    abp_security=[{"bearerAuth": []}],
    abp_responses=problem_responses(401, 422, 429, 500, 503),
)
bp.before_request(reject_repeated)  # ?status=a&status=b is a 422, not "the first one wins"
health = APIBlueprint("health", __name__, abp_tags=[Tag(name="operations")])


def _json(model: OrderOut | OrderPage, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def _created(body: str, order_id: str, *, replayed: bool = False) -> Response:
    response = Response(body, status=201, mimetype="application/json")
    # What url_for("orders.get_order", order_id=order_id) returns, without building a URL adapter.
    response.headers["Location"] = f"{request.script_root}/orders/{order_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _render(order: Order) -> str:
    return OrderOut.of(order).model_dump_json()


def _place(body: OrderIn) -> Order:
    return place_order(
        db.session(),
        PlaceOrder(
            customer_id=body.customer_id,
            currency=body.currency,
            lines=tuple(LineRequest(line.sku, line.quantity, line.unit_amount) for line in body.lines),
        ),
    )


@bp.post(
    "/orders",
    operation_id="createOrder",
    summary="Place an order",
    description="Send `Idempotency-Key` to make retries safe: the same key and body return the first order.",
    responses={201: OrderCreated, **problem_responses(400, 409, 413, 415)},
)
def create_order(body: OrderIn, header: IdempotencyHeader) -> Response:
    key = header.idempotency_key
    if key is None:
        order = _place(body)
        api_metrics().orders_placed.inc()
        return _created(_render(order), str(order.id))
    settings = SETTINGS.get()
    fingerprint = idempotency.request_hash(request.method, request.path, request.get_json())
    idempotency.prune_when_due(current_app, db.engine)  # one bounded batch, after the response is sent
    outcome = idempotency.claim(db.engine, settings, g.client_id, key, fingerprint)
    if isinstance(outcome, idempotency.Replay):
        replayed = OrderOut.model_validate_json(outcome.body)
        log.info("order.idempotent_replay", order_id=str(replayed.id), client=g.client_id)
        api_metrics().idempotent_replays.inc()
        return _created(outcome.body, str(replayed.id), replayed=True)
    try:
        with idempotency.recorded_with_order(db.session(), outcome, _render) as recording:
            order = _place(body)
    except BaseException:
        idempotency.release(db.engine, outcome)
        raise
    api_metrics().orders_placed.inc()
    stored = recording.body if recording.body is not None else _render(order)  # the body the key replays
    return _created(stored, str(order.id))


@bp.get(
    "/orders/<order_id>",
    operation_id="getOrder",
    summary="Read one order",
    responses={200: OrderOut, **problem_responses(404)},
)
def get_order(path: OrderPath) -> Response:
    try:
        key = uuid.UUID(path.order_id)
    except ValueError:
        raise NotFound(f"No order {path.order_id!r}.") from None
    order = db.session.get(Order, key)
    if order is None:
        raise NotFound(f"No order {path.order_id!r}.")
    return _json(OrderOut.of(order))


def _filtered(query: OrderQuery) -> Select[Order]:
    stmt = select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(query.limit + 1)
    if query.customer_id is not None:
        stmt = stmt.where(Order.customer_id == query.customer_id)
    if query.status is not None:
        stmt = stmt.where(Order.status == query.status)
    if query.created_gte is not None:
        stmt = stmt.where(Order.created_at >= query.created_gte)
    if query.created_lt is not None:
        stmt = stmt.where(Order.created_at < query.created_lt)
    if query.cursor is not None:
        after = cursor.decode(query.cursor)  # InvalidCursor: a 400 naming the parameter (problems)
        stmt = stmt.where(tuple_(Order.created_at, Order.id) < (after.created_at, after.order_id))
    return stmt


@bp.get(
    "/orders",
    operation_id="listOrders",
    summary="List orders",
    responses={200: OrderPage, **problem_responses(400)},
)
def list_orders(query: OrderQuery) -> Response:
    """Newest first, keyset-paged by (created_at, id) so pages stay stable while orders arrive."""
    orders = list(db.session.scalars(_filtered(query)))
    page, more = orders[: query.limit], len(orders) > query.limit
    following = cursor.encode(page[-1].created_at, page[-1].id) if more else None
    return _json(OrderPage(data=[OrderOut.of(o) for o in page], next_cursor=following))


@health.get("/healthz", summary="Process alive", responses={200: Status})
def healthz() -> Response:
    return Response('{"status":"ok"}', mimetype="application/json")


@health.get(
    "/readyz",
    summary="Database reachable",
    responses={200: Status, **problem_responses(503)},
)
def readyz() -> Response:
    db.session.execute(text("SELECT 1"))
    return Response('{"status":"ready"}', mimetype="application/json")
