"""The invoice worker: consumes ``order.placed`` and makes exactly one invoice per order.

``app`` (the ``celery -A invoice_worker`` target) is built on first access, so the operator commands
(``python -m invoice_worker``) can refuse bad settings with a message instead of a traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from invoice_worker.celery_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
