"""Flask extensions, created once and bound to an app in ``create_app``, and the app's typed state.

The app's own per-app objects (its settings, key ring, limits, caches) live in ``app.extensions``
under an ``AppState`` key each, so a reader gets them typed (``SETTINGS.get()``) instead of
looking up a string and casting.
"""

from __future__ import annotations

from typing import Generic, TypeVar, cast

import structlog
from flask import Flask, current_app
from flask_migrate import Migrate
from flask_outbox import Outbox
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

from shared.config import Settings

__all__ = ["SETTINGS", "AppState", "Base", "db", "discard_broken_sessions", "migrate", "outbox"]

log = structlog.get_logger(__name__)


class Base(DeclarativeBase):
    pass


# Request-scoped sessions: nothing goes stale, and the response is built from the committed
# objects without re-reading them.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()
outbox = Outbox(db=db, answered=True)
"""The orders database's outbox: ``order.placed`` rows, answered by ``invoice.created`` (re-driven until)."""

T = TypeVar("T")


class AppState(Generic[T]):
    """One typed per-app object in ``app.extensions``, set once in ``create_app``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def init_app(self, app: Flask, value: T) -> T:
        app.extensions[self.name] = value
        return value

    def get(self, app: Flask | None = None) -> T:
        """The object of ``app``, else of the current app (in a request or an app context)."""
        return cast(T, (app or current_app).extensions[self.name])


SETTINGS: AppState[Settings] = AppState("order_service.settings")
"""The settings ``create_app`` was given."""


def discard_broken_sessions(app: Flask) -> None:
    """Close each request's session, invalidating it when its connection died (database restart).

    Flask-SQLAlchemy's own teardown would roll back on the dead connection after the response
    was made and turn a clean 503 into a bare 500; registered later, this one runs first.
    """

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        try:
            db.session.remove()
        except DBAPIError as error:
            log.warning("api.session_discarded", error=str(error.orig))
            # remove() failed in close(), so the registry still holds the broken session.
            db.session().invalidate()
            db.session.registry.clear()
