"""RFC 9457 problem documents for every error the API returns; never a traceback."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Flask, Response, json
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from order_service.extensions import db
from order_service.services import OrderRefused

__all__ = ["PROBLEM_JSON", "problem", "register_error_handlers", "validation_problem"]

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://errors.order-service.example/"


def problem(status: int, title: str, detail: str, slug: str, **extra: Any) -> Response:
    body = {"type": _TYPE_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def _pointer(location: tuple[int | str, ...]) -> str:
    return "".join(f"/{str(part).replace('~', '~0').replace('/', '~1')}" for part in location)


def validation_problem(error: ValidationError) -> Response:
    """422 naming every invalid field by its JSON pointer into the request body."""
    errors = [
        {"pointer": _pointer(item["loc"]), "detail": item["msg"], "code": item["type"]}
        for item in error.errors(include_url=False, include_input=False)
    ]
    fields = ", ".join(e["pointer"] or "/" for e in errors)
    return problem(422, "Invalid order", f"Invalid fields: {fields}", "validation", errors=errors)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = problem(status, exc.name, exc.description or exc.name, f"http-{status}")
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(ValidationError)
    def _invalid(exc: ValidationError) -> Response:
        return validation_problem(exc)

    @app.errorhandler(OrderRefused)
    def _refused(exc: OrderRefused) -> Response:
        return problem(422, "Order refused", exc.reason, "order-refused", receiver=exc.receiver)

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        db.session.rollback()
        log.warning("api.database_unavailable", error=str(exc.orig))
        response = problem(503, "Service unavailable", "The orders database is unavailable.", "unavailable")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("api.unexpected_error")
        return problem(500, "Internal error", "The order could not be processed.", "internal")
