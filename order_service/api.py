"""HTTP endpoints of the order service."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from flask import Blueprint, Response, json, request, url_for
from sqlalchemy import select, text, tuple_
from werkzeug.exceptions import BadRequest, NotFound, UnsupportedMediaType

from order_service.extensions import db
from order_service.models import Order
from order_service.problems import problem
from order_service.schemas import OrderIn, OrderOut, OrderPage
from order_service.services import LineRequest, PlaceOrder, place_order

__all__ = ["bp"]

bp = Blueprint("orders", __name__)


def _json(model: OrderOut | OrderPage, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def _order_body() -> OrderIn:
    if not request.is_json:
        raise UnsupportedMediaType("Send the order as application/json.")
    try:
        body = json.loads(request.get_data(cache=False))
    except ValueError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from exc
    return OrderIn.model_validate(body)


@bp.post("/orders")
def create_order() -> Response:
    body = _order_body()
    order = place_order(
        db.session(),
        PlaceOrder(
            customer_id=body.customer_id,
            currency=body.currency,
            lines=tuple(LineRequest(line.sku, line.quantity, line.unit_amount) for line in body.lines),
        ),
    )
    response = _json(OrderOut.of(order), status=201)
    response.headers["Location"] = url_for("orders.get_order", order_id=str(order.id))
    return response


@bp.get("/orders/<order_id>")
def get_order(order_id: str) -> Response:
    try:
        key = uuid.UUID(order_id)
    except ValueError:
        raise NotFound(f"No order {order_id!r}.") from None
    order = db.session.get(Order, key)
    if order is None:
        raise NotFound(f"No order {order_id!r}.")
    return _json(OrderOut.of(order))


def _encode_cursor(order: Order) -> str:
    return base64.urlsafe_b64encode(f"{order.created_at.isoformat()}|{order.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(order_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("The cursor is not one this API issued.") from None


@bp.get("/orders")
def list_orders() -> Response:
    """Newest first, keyset-paged by (created_at, id) so pages stay stable while orders arrive."""
    limit = request.args.get("limit", default=50, type=int)
    if limit is None or not 1 <= limit <= 200:
        return problem(422, "Invalid query", "limit must be between 1 and 200", "validation")
    query = select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    if customer_id := request.args.get("customer_id"):
        query = query.where(Order.customer_id == customer_id)
    if cursor := request.args.get("cursor"):
        query = query.where(tuple_(Order.created_at, Order.id) < _decode_cursor(cursor))
    orders = list(db.session.scalars(query))
    page, more = orders[:limit], len(orders) > limit
    return _json(
        OrderPage(data=[OrderOut.of(o) for o in page], next_cursor=_encode_cursor(page[-1]) if more else None)
    )


@bp.get("/healthz")
def healthz() -> Response:
    return Response('{"status":"ok"}', mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    db.session.execute(text("SELECT 1"))
    return Response('{"status":"ready"}', mimetype="application/json")
