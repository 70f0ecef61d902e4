"""Query parameters and headers of the order endpoints are single-valued: a repeat is refused.

Werkzeug keeps every value of a repeated parameter and flask-openapi3 validates only the first, so
``?status=placed&status=invoiced`` used to answer as if the second were not there. A client (or a
proxy in between) that sends two values meant something the API would silently ignore, so both are
named in a 422, as any other invalid parameter is. An empty value (``?customer_id=``) is refused the
same way: flask-openapi3 reads it as an absent parameter, so a filter the client sent would vanish.
"""

from __future__ import annotations

from flask import Response, request

from order_service.problems import problem

__all__ = ["SINGLE_HEADERS", "reject_repeated"]

SINGLE_HEADERS = ("Idempotency-Key",)
"""Headers that change what a request does; a second copy would be silently ignored."""


def reject_repeated() -> Response | None:
    """``before_request`` of the order endpoints: 422 naming each parameter or header repeated or empty."""
    errors = [
        {"parameter": name, "detail": f"Given {len(values)} times; send it once", "code": "repeated"}
        for name, values in request.args.lists()
        if len(values) > 1
    ]
    errors += [
        {"parameter": name, "detail": "Empty; give a value or leave the parameter out", "code": "empty"}
        for name, values in request.args.lists()
        if len(values) == 1 and values[0] == ""
    ]
    errors += [
        {"header": name, "detail": "Given more than once; send it once", "code": "repeated"}
        for name in SINGLE_HEADERS
        if len(request.headers.getlist(name)) > 1
    ]
    if not errors:
        return None
    names = ", ".join(repr(e["parameter"]) if "parameter" in e else e["header"] for e in errors)
    detail = f"Given more than once or empty: {names}"
    return problem(422, "Invalid request", detail, "validation", errors=errors)
