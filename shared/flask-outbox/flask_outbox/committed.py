"""Work that must follow a commit, never precede it: ``after_commit(session, action)``.

A handler's log line that says an effect happened (``invoice.created``) is evidence only once its
transaction committed; written before, a worker killed between the line and the commit leaves a line
for an effect that never was, and the redelivery writes a second one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

__all__ = ["after_commit"]

_ACTIONS = "flask_outbox.after_commit"
"""``session.info`` key: what to run once the session's transaction commits."""


def after_commit(session: Session, action: Callable[[], object]) -> None:
    """Run ``action`` once the session's current transaction commits (dropped if it rolls back).

    It runs with the log context of the moment it was registered (a batch's message ids).
    """
    context = structlog.contextvars.get_contextvars()

    def run() -> None:
        with structlog.contextvars.bound_contextvars(**context):
            action()

    session.info.setdefault(_ACTIONS, []).append(run)


@event.listens_for(Session, "after_commit")
def _run_committed(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's release: the transaction is still open
        return
    for action in session.info.pop(_ACTIONS, []):
        action()


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, _previous: Any) -> None:
    session.info.pop(_ACTIONS, None)


@event.listens_for(Session, "after_transaction_end")
def _drop_unfinished(session: Session, transaction: SessionTransaction) -> None:
    """A transaction closed without a commit (``close()``) leaves nothing for the next one."""
    if transaction.parent is None:
        session.info.pop(_ACTIONS, None)
