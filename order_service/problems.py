"""RFC 9457 problem documents for every error the API returns; never a traceback.

Every HTTP error handler of the order service is registered here (``register_error_handlers``), so
what a client sees for an exception is found in one place.
"""

from __future__ import annotations

from typing import Any

import structlog
from flask import Flask, Response, json
from flask_limiter import RateLimitExceeded
from flask_openapi3.types import ResponseDict
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from order_service.cursor import InvalidCursor
from order_service.extensions import db
from order_service.idempotency import KeyInFlight, KeyReused
from order_service.ratelimit import retry_after
from order_service.services import OrderRefused

__all__ = [
    "PROBLEM_JSON",
    "openapi_validation_error",
    "problem",
    "problem_responses",
    "register_error_handlers",
    "validation_problem",
]

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://errors.order-service.example/"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
DATABASE_RETRY_AFTER = 1
"""Seconds a client should wait after a 503 for an overloaded or unreachable database."""
_HEADER_MODELS = {"IdempotencyHeader"}
_PARAMETER_MODELS = {"OrderQuery", "OrderPath"}

_DESCRIPTIONS = {
    400: "Malformed JSON, or a cursor this API did not issue (`errors` names the parameter)",
    401: "Missing or unknown API key",
    404: "No such resource",
    409: "A request with this Idempotency-Key is still in flight",
    413: "Body larger than the configured limit",
    415: "Body is not application/json",
    422: "Invalid input; `errors` names each field by JSON pointer or parameter",
    429: "Rate limit exceeded: this API key's, or this address's for requests without a valid key",
    500: "Unexpected server error (no details leak)",
    503: "Database unavailable or overloaded; retry after `Retry-After` seconds",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: {"Retry-After": {"schema": {"type": "string"}}},
    503: {"Retry-After": {"schema": {"type": "string"}}},
}


def problem_responses(*statuses: int) -> ResponseDict:
    """OpenAPI response objects for the given error statuses, all ``application/problem+json``."""
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in statuses
    }


def problem(status: int, title: str, detail: str, slug: str | None = None, **extra: Any) -> Response:
    """A problem response; without a slug the type is ``about:blank`` and the title the status phrase."""
    kind = _TYPE_BASE + slug if slug else "about:blank"
    body = {"type": kind, "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def _pointer(location: tuple[int | str, ...]) -> str:
    return "".join(f"/{str(part).replace('~', '~0').replace('/', '~1')}" for part in location)


def validation_problem(error: ValidationError, where: str = "pointer") -> Response:
    """422 naming every invalid field: a JSON pointer into the body, or a parameter / header name."""
    errors = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        location = _pointer(item["loc"]) if where == "pointer" else ".".join(map(str, item["loc"]))
        errors.append({where: location, "detail": item["msg"], "code": item["type"]})
    names = ", ".join(e[where] or "/" for e in errors)
    kind = {"pointer": "fields", "parameter": "parameters", "header": "headers"}[where]
    return problem(422, "Invalid request", f"Invalid {kind}: {names}", "validation", errors=errors)


def openapi_validation_error(error: ValidationError) -> Response:
    """flask-openapi3's validation hook: its errors become the same 422 problem as ours."""
    if error.title in _HEADER_MODELS:
        return validation_problem(error, "header")
    if error.title in _PARAMETER_MODELS:
        return validation_problem(error, "parameter")
    return validation_problem(error)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if isinstance(exc.response, Response):
            return exc.response  # already rendered, e.g. flask-openapi3's abort(validation response)
        status = exc.code or 500
        response = problem(status, exc.name, exc.description or exc.name)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value  # Allow (405), WWW-Authenticate (401), ...
        return response

    @app.errorhandler(ValidationError)
    def _invalid(exc: ValidationError) -> Response:
        return validation_problem(exc)

    @app.errorhandler(InvalidCursor)
    def _bad_cursor(exc: InvalidCursor) -> Response:
        error = {"parameter": "cursor", "detail": "Not a cursor this API issued", "code": "invalid_cursor"}
        detail = "The cursor is not one this API issued; pass a page's next_cursor unchanged."
        return problem(400, "Bad Request", detail, "invalid-cursor", errors=[error])

    @app.errorhandler(OrderRefused)
    def _refused(exc: OrderRefused) -> Response:
        # The receiver's name is an implementation detail: logged for operators, never sent.
        log.info("order.refused", receiver=exc.receiver, reason=exc.reason)
        return problem(422, "Order refused", exc.reason, "order-refused", reason=exc.reason)

    @app.errorhandler(KeyReused)
    def _key_reused(exc: KeyReused) -> Response:
        detail = "This Idempotency-Key was used with a different request; use a new key."
        return problem(422, "Idempotency-Key reused", detail, "idempotency-key-reused")

    @app.errorhandler(KeyInFlight)
    def _key_in_flight(exc: KeyInFlight) -> Response:
        detail = "A request with this Idempotency-Key is still being processed; retry shortly."
        response = problem(409, "Request in progress", detail, "idempotency-key-in-flight")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> Response:
        response = problem(429, "Too Many Requests", f"Rate limit exceeded: {exc.limit.limit}.")
        response.headers["Retry-After"] = str(retry_after())
        return response

    @app.errorhandler(OperationalError)  # includes statement_timeout (QueryCanceled), lost connections
    @app.errorhandler(InterfaceError)  # a connection the driver already considers closed
    @app.errorhandler(PoolTimeout)  # every pooled connection busy for pool_timeout seconds
    def _database_down(exc: Exception) -> Response:
        db.session.rollback()
        error = getattr(exc, "orig", None) or exc
        log.warning("api.database_unavailable", kind=type(error).__name__, error=str(error))
        response = problem(503, "Service unavailable", "The orders database is unavailable.", "unavailable")
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("api.unexpected_error")
        return problem(500, "Internal error", "The order could not be processed.", "internal")

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError) -> Response:
        """An error that cost the connection (the server ended the session: an idle-in-transaction
        timeout, an administrator) is the database being unavailable to this request; others are bugs."""
        if exc.connection_invalidated:
            return _database_down(exc)
        return _unexpected(exc)
