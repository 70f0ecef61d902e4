"""The naive baseline: the Flask + Celery app a team writes first. Bench-only, never a product mode.

Flask-SQLAlchemy inserts the order and its lines, commits, then ``create_invoice.delay()`` from the
view. It is UNSAFE on purpose: a crash or a broker fault between the commit and the publish loses the
invoice for good, and nothing answers the order back. It has no API keys, rate limit, idempotency,
outbox, inbox or dead letters: it prices what the product's guarantees cost.

``gunicorn bench.naive_app:app`` with ``NAIVE_ORDERS_DATABASE_URL`` (its own database, tables made by
``create_tables``), ``BROKER_URL`` and ``QUEUE_PREFIX`` (see ``bench.naive_worker``).
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bench.naive_worker import create_invoice

__all__ = ["Order", "OrderLine", "create_app", "create_tables", "db"]


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def _now() -> datetime:
    return datetime.now(UTC)


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[str] = mapped_column(String(64), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount_total: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    lines: Mapped[list[OrderLine]] = relationship(back_populates="order")


class OrderLine(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    order: Mapped[Order] = relationship(back_populates="lines")


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["NAIVE_ORDERS_DATABASE_URL"]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": int(os.environ.get("API_POOL_SIZE", "5"))}
    db.init_app(app)

    @app.post("/orders")
    def place_order():  # type: ignore[no-untyped-def]
        data = request.get_json()
        order_id, placed_at = uuid.uuid4(), _now()
        lines = [
            OrderLine(sku=x["sku"], quantity=x["quantity"], unit_amount=x["unit_amount"])
            for x in data["lines"]
        ]
        total = sum(line.quantity * line.unit_amount for line in lines)
        db.session.add(
            Order(
                id=order_id,
                customer_id=data["customer_id"],
                currency=data["currency"],
                amount_total=total,
                created_at=placed_at,
                lines=lines,
            )
        )
        db.session.commit()
        # Read from the request, not the committed (expired) objects: no reload after the commit.
        create_invoice.delay(
            {
                "order_id": str(order_id),
                "customer_id": data["customer_id"],
                "currency": data["currency"],
                "amount_total": total,
                "lines": data["lines"],
                "placed_at": placed_at.isoformat(),
            }
        )
        return jsonify(id=str(order_id), status="placed", amount_total=total), 201

    @app.get("/readyz")
    def ready():  # type: ignore[no-untyped-def]
        return {"status": "ready"}

    return app


def create_tables(orders_url: str) -> None:
    """The naive app's schema, made once before its processes start (no migrations)."""
    engine = create_engine(orders_url)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()


def __getattr__(name: str) -> Flask:
    """``gunicorn bench.naive_app:app`` builds the app on first access, not at import."""
    if name != "app":
        raise AttributeError(name)
    app = create_app()
    globals()["app"] = app
    return app
