"""``after_commit``: a handler's "it happened" line is written only once its transaction committed."""

from __future__ import annotations

from flask_outbox import after_commit
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session


def test_actions_run_after_the_commit_and_never_after_a_rollback() -> None:
    engine = create_engine("sqlite://")
    ran: list[str] = []
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        after_commit(session, lambda: ran.append("rolled back"))
        session.rollback()
        session.execute(text("SELECT 1"))
        after_commit(session, lambda: ran.append("committed"))
        assert ran == [], "ran before the commit"
        session.commit()
        session.execute(text("SELECT 1"))
        session.commit()  # the next transaction runs nothing again
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        after_commit(session, lambda: ran.append("closed without a commit"))
    assert ran == ["committed"]
    engine.dispose()


def test_an_action_keeps_the_log_context_it_was_registered_in() -> None:
    import structlog

    engine = create_engine("sqlite://")
    seen: list[dict[str, object]] = []
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        with structlog.contextvars.bound_contextvars(message_id="m-1"):
            after_commit(session, lambda: seen.append(structlog.contextvars.get_contextvars()))
        session.commit()
    assert seen == [{"message_id": "m-1"}]
    engine.dispose()
