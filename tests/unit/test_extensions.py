"""The API's session teardown when the database connection died under a request."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from order_service.extensions import db


def test_session_whose_close_fails_is_invalidated_and_discarded(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    invalidated: list[Session] = []
    real_invalidate = Session.invalidate

    def close_on_dead_connection(self: Session) -> None:
        raise OperationalError("ROLLBACK", {}, Exception("server closed the connection unexpectedly"))

    def invalidate(self: Session) -> None:
        invalidated.append(self)
        real_invalidate(self)

    with app.app_context():
        broken = db.session()
        broken.execute(select(1))
        monkeypatch.setattr(Session, "close", close_on_dead_connection)
        monkeypatch.setattr(Session, "invalidate", invalidate)
    # Leaving the app context ran the teardown: no exception escaped it.
    monkeypatch.undo()

    assert invalidated == [broken]
    with app.app_context():
        assert db.session() is not broken
