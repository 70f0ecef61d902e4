"""Rate limits: per API key on the order endpoints, and per address and per key for requests without one.

The per-key limit is Flask-Limiter's, keyed by the client id that ``before_request`` auth sets (so
auth must be registered first); requests it never identified (health, readiness, docs, the pipeline
page) are not counted. ``FailedAuthLimit`` throttles key guessing: each request without a valid key
counts against its client address and against the key it presented, and once either has spent its
budget such requests are refused *before* the key is looked up, so guessing can neither succeed nor
load the database. A valid key is never judged by it (``auth`` checks keys first). Both keep their
counters in Redis when the broker is Redis, else in the process; if Redis is unreachable they fall
back to in-process counters rather than failing orders.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import structlog
from flask import Flask, g
from flask_limiter import Limiter
from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from order_service.extensions import AppState
from shared.config import Settings

__all__ = ["FailedAuthLimit", "init_rate_limit", "retry_after"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


def _client() -> str:
    return str(g.client_id)


def _exempt() -> bool:
    return "client_id" not in g


class FailedAuthLimit:
    """Requests without a valid API key, counted per identity (``address:…``, ``key:…``) in a fixed window.

    Checked before the lookup and counted after it fails, so concurrent guesses can overshoot the
    limit by at most the number of requests in flight at once (workers x threads).
    """

    def __init__(self, limit: str, storage_uri: str, namespace: str) -> None:
        self._item = parse(limit)
        self._namespace = namespace
        self._limiter = FixedWindowRateLimiter(storage_from_string(storage_uri))
        self._fallback = FixedWindowRateLimiter(MemoryStorage())

    @classmethod
    def from_settings(cls, settings: Settings) -> FailedAuthLimit:
        namespace = f"{settings.queue_prefix}orders-api-auth-failures"
        return cls(settings.auth_failure_rate_limit, settings.rate_limit_storage, namespace)

    def _on_storage(self, call: Callable[[FixedWindowRateLimiter], _T]) -> _T:
        try:
            return call(self._limiter)
        except Exception as error:  # any storage failure (Redis down): count in this process instead
            log.warning("api.auth_limit_storage_unavailable", error=str(error))
            return call(self._fallback)

    def retry_after(self, identities: Sequence[str]) -> int | None:
        """Seconds until every one of ``identities`` is under its limit again; ``None`` if all are now."""
        waits = [self._wait(identity) for identity in identities]
        over = [wait for wait in waits if wait is not None]
        return max(over) if over else None

    def _wait(self, identity: str) -> int | None:
        if self._on_storage(lambda limiter: limiter.test(self._item, self._namespace, identity)):
            return None
        stats = self._on_storage(lambda lim: lim.get_window_stats(self._item, self._namespace, identity))
        return max(1, math.ceil(stats.reset_time - time.time()))

    def failed(self, identities: Sequence[str]) -> None:
        """Count one request without a valid key against each of ``identities``."""
        for identity in identities:
            self._hit(identity)

    def _hit(self, identity: str) -> None:
        self._on_storage(lambda limiter: limiter.hit(self._item, self._namespace, identity))


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

    return _LIMITER.init_app(app, limiter)


_LIMITER: AppState[Limiter] = AppState("order_service.limiter")


def retry_after() -> int:
    """Seconds until the limit this request exceeded resets (its 429's ``Retry-After``; see ``problems``)."""
    current = _LIMITER.get().current_limit
    return max(1, math.ceil(current.reset_at - time.time())) if current else 1
