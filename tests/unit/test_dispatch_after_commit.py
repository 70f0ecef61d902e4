"""Dispatch after commit, by the session's own events: only an outermost commit publishes, any rollback drops.

The dispatcher's publish is recorded instead of sent (the Redis side is in
tests/integration/test_dispatch_postgres.py); the session is a real one, on SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask_outbox.dispatch import AfterCommitDispatcher
from flask_outbox.messages import PendingMessage
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session


class Recording(AfterCommitDispatcher):
    def __init__(self) -> None:
        self.topics, self.grace = frozenset({"order.placed"}), 5.0
        self.published: list[list[uuid.UUID]] = []

    def publish(self, messages: list[PendingMessage]) -> bool:
        self.published.append([message.message_id for message in messages])
        return True


def _message() -> PendingMessage:
    return PendingMessage(0, uuid.uuid4(), "order.placed", "order-1", {}, {}, 0)


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    with Session(engine) as session:
        yield session
    engine.dispose()


def test_the_outermost_commit_publishes_the_transactions_messages_once(session: Session) -> None:
    dispatcher = Recording()
    first, second = _message(), _message()
    session.execute(text("SELECT 1"))
    dispatcher.add(session, first)
    with session.begin_nested():  # a savepoint's release is no commit of the order
        dispatcher.add(session, second)
    assert dispatcher.published == []
    session.commit()
    assert dispatcher.published == [[first.message_id, second.message_id]]
    session.execute(text("SELECT 1"))
    session.commit()
    assert dispatcher.published == [[first.message_id, second.message_id]], "nothing twice"


def test_a_savepoint_rollback_drops_everything_pending_the_relay_publishes_what_committed(
    session: Session,
) -> None:
    dispatcher = Recording()
    session.execute(text("SELECT 1"))
    dispatcher.add(session, _message())
    savepoint = session.begin_nested()
    dispatcher.add(session, _message())
    savepoint.rollback()
    session.commit()
    assert dispatcher.published == []


def test_a_rollback_or_a_close_without_commit_leaves_nothing_for_the_next_transaction(
    session: Session,
) -> None:
    dispatcher = Recording()
    session.execute(text("SELECT 1"))
    dispatcher.add(session, _message())
    session.rollback()
    session.execute(text("SELECT 1"))
    dispatcher.add(session, _message())
    session.close()
    session.execute(text("SELECT 1"))
    session.commit()
    assert dispatcher.published == []


def test_a_dispatch_that_fails_in_any_way_never_fails_the_commit(session: Session) -> None:
    """The order is committed whatever the dispatch does; the relay publishes it after the grace."""

    class Broken(Recording):
        def publish(self, messages: list[PendingMessage]) -> bool:
            raise ValueError("cannot encode")

    dispatcher = Broken()
    session.execute(text("CREATE TABLE orders (id INTEGER)"))
    session.execute(text("INSERT INTO orders VALUES (1)"))
    dispatcher.add(session, _message())
    session.commit()
    assert session.execute(text("SELECT count(*) FROM orders")).scalar() == 1
