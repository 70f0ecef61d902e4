"""Flask extensions, created once and bound to an app in ``create_app``."""

from __future__ import annotations

import structlog
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

__all__ = ["Base", "db", "discard_broken_sessions", "migrate"]

log = structlog.get_logger(__name__)


class Base(DeclarativeBase):
    pass


# Request-scoped sessions: nothing goes stale, and the response is built from the committed
# objects without re-reading them.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()


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
