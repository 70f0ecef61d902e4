"""Request-body gate for the order endpoints: 415, 413, 400 and a JSON object, before any validation.

flask-openapi3 reads bodies with ``get_json(silent=True)``, which would turn malformed JSON or a
wrong content type into a vague 422; checking first gives each failure its own status.
"""

from __future__ import annotations

import json
from typing import NoReturn

from flask import Response, request

from order_service.auth import PROTECTED_BLUEPRINTS
from order_service.problems import problem

__all__ = ["check_json_body"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def check_json_body() -> Response | None:
    """``before_request``: answer 415/413/400/422 for bodies that can't be an order at all."""
    if request.method not in _BODY_METHODS or request.blueprint not in PROTECTED_BLUEPRINTS:
        return None
    if request.mimetype != "application/json":
        response = problem(
            415, "Unsupported Media Type", "Send the body as 'Content-Type: application/json'."
        )
        response.headers["Accept-Post"] = "application/json"
        return response
    raw = request.get_data(cache=True)  # over MAX_REQUEST_BYTES: werkzeug raises 413 here
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return problem(400, "Bad Request", f"The body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        error = {"pointer": "", "detail": "The body must be a JSON object", "code": "model_type"}
        return problem(422, "Invalid request", "The body must be a JSON object", "validation", errors=[error])
    return None
