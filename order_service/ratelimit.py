"""Per-API-key rate limit with Flask-Limiter: Redis counters when the broker is Redis, else in-process.

Only the order endpoints count (health, readiness and docs stay free), keyed by the authenticated
client id, so ``before_request`` auth must be registered first. If Redis is unreachable the limiter
falls back to in-memory counters rather than failing orders.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, g, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

from order_service.auth import PROTECTED_BLUEPRINTS
from order_service.problems import problem
from shared.config import Settings

__all__ = ["init_rate_limit"]


def _client() -> str:
    return str(g.get("client_id") or get_remote_address())


def _exempt() -> bool:
    return request.blueprint not in PROTECTED_BLUEPRINTS


def init_rate_limit(app: Flask, settings: Settings) -> Limiter:
    limiter = Limiter(
        _client,
        app=app,
        default_limits=[settings.rate_limit],
        default_limits_exempt_when=_exempt,
        storage_uri=settings.rate_limit_storage,
        key_prefix=f"{settings.queue_prefix}orders-api",
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        wait = max(1, math.ceil(current.reset_at - time.time())) if current else 1
        response = problem(429, "Too Many Requests", f"Rate limit exceeded: {exc.limit.limit}.")
        response.headers["Retry-After"] = str(wait)
        return response

    return limiter
