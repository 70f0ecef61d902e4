"""The Flask extension: add outbox messages to the current ``db.session`` transaction.

::

    db = SQLAlchemy()
    outbox = Outbox(db=db)          # defines the ``outbox`` table on db.metadata
    outbox.init_app(app)            # or Outbox(app, db)

    @user_signed_up.connect
    def welcome(sender, user, **_):
        outbox.add("user.signed_up", {"user_id": user.id}, aggregate_type="user", aggregate_id=str(user.id))

The message is committed, or rolled back, with whatever else the transaction wrote; the relay
publishes it after the commit. ``add`` never commits and never touches the broker.

In development and tests (``app.debug`` or ``app.testing``) ``init_app`` also installs the
unsafe-dispatch guard (``flask_outbox.guard``), set by ``OUTBOX_UNSAFE_DISPATCH``: ``"warn"``
(default there), ``"raise"`` or ``"off"``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, get_args

from flask import Flask, has_app_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Table

from flask_outbox import guard
from flask_outbox.table import define_outbox
from flask_outbox.writer import OutboxMessage, add_message

__all__ = ["EXTENSION_KEY", "Outbox"]

EXTENSION_KEY = "outbox"
"""The extension's key in ``app.extensions``."""


class Outbox:
    """The outbox of a Flask-SQLAlchemy ``db``: its table, and ``add`` on ``db.session``."""

    def __init__(
        self,
        app: Flask | None = None,
        db: SQLAlchemy | None = None,
        *,
        table: str | Table = "outbox",
        answered: bool = False,
    ) -> None:
        """``table``: a name (defined on ``db.metadata`` if not there yet) or a table of your own.

        ``answered``: see ``define_outbox``.
        """
        if db is None:
            raise TypeError("Outbox needs the Flask-SQLAlchemy db it writes through: Outbox(app, db)")
        self.db = db
        if isinstance(table, str):
            known = db.metadata.tables.get(table)
            table = known if known is not None else define_outbox(db.metadata, table, answered=answered)
        self.table: Table = table
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app`` (once); in debug or testing, install the unsafe-dispatch guard."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("An Outbox is already registered on this app; import and use that one.")
        app.extensions[EXTENSION_KEY] = self
        default = "warn" if app.debug or app.testing else "off"
        mode = app.config.setdefault("OUTBOX_UNSAFE_DISPATCH", default)
        if mode not in get_args(guard.Mode):
            raise ValueError(f"OUTBOX_UNSAFE_DISPATCH must be one of {get_args(guard.Mode)}, not {mode!r}")
        if mode != "off":
            guard.install(mode)

    def add(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        aggregate_type: str,
        aggregate_id: str,
        headers: Mapping[str, Any] | None = None,
        message_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Add a message to the current ``db.session`` transaction and return its id; never commits.

        ``payload`` and ``headers`` must be JSON-serialisable; messages of one ``aggregate_id`` are
        published in the order they were added. The id is the consumer's dedup key (the Celery task id).
        """
        if not has_app_context():
            raise RuntimeError(
                "Outbox.add needs an app context: it writes to db.session, the current app's transaction."
            )
        message = OutboxMessage(
            topic=topic,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload=dict(payload),
            headers=dict(headers or {}),
            message_id=message_id or uuid.uuid4(),
        )
        add_message(self.db.session(), self.table, message)
        return message.message_id
