"""The unsafe-dispatch guard: a Celery task published inside a database transaction that wrote.

``task.delay()`` before the commit sends a message about data that may never commit (a rollback)
or that the consumer cannot see yet (it reads before the commit): that is what the outbox is for.
Installed (``install("warn" | "raise")``; the ``Outbox`` extension does it in debug and testing),
every publish (``delay``, ``apply_async``, ``send_task``: Celery's ``before_task_publish``) made
while a SQLAlchemy session in the SAME thread has an open transaction with pending writes (new,
dirty or deleted objects, a flush, or an INSERT/UPDATE/DELETE on its connection) is reported:

* ``"warn"``: an ``UnsafeDispatchWarning`` and a structlog error line. Where warnings are errors
  (``pytest -W error``), the publish raises ``UnsafeDispatch`` instead;
* ``"raise"``: ``UnsafeDispatch``, and nothing is published.

Sessions are followed with SQLAlchemy session and engine events, per thread; nothing is patched.
"""

from __future__ import annotations

import re
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal
from weakref import WeakKeyDictionary

import structlog
from celery.signals import before_task_publish
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine.interfaces import ExecutionContext
from sqlalchemy.orm import Session, SessionTransaction

__all__ = ["Mode", "UnsafeDispatch", "UnsafeDispatchWarning", "install", "mode", "uninstall"]

log = structlog.get_logger(__name__)

Mode = Literal["warn", "raise", "off"]


class UnsafeDispatchWarning(UserWarning):
    """A Celery task was published inside a database transaction with pending writes."""


class UnsafeDispatch(BaseException):
    """A Celery task was published inside a database transaction with pending writes.

    A ``BaseException``, like ``KeyboardInterrupt``: Celery's signal dispatch catches every
    ``Exception`` a receiver raises, logs it and publishes anyway. Meant for development and tests.
    """


@dataclass(slots=True)
class _Transaction:
    connections: set[Connection] = field(default_factory=set)
    wrote: bool = False


class _Sessions(threading.local):
    def __init__(self) -> None:
        self.open: WeakKeyDictionary[Session, _Transaction] = WeakKeyDictionary()


_sessions = _Sessions()
_mode: Mode = "off"
_lock = threading.Lock()
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_SKIPPED_FRAMES = ("celery.", "kombu.", __name__)


def mode() -> Mode:
    """The installed mode (``"off"``: not installed)."""
    return _mode


def install(new_mode: Mode = "warn") -> None:
    """Watch sessions and publishes in this process (idempotent; ``"off"`` uninstalls)."""
    global _mode  # noqa: PLW0603 - one guard per process, like the event registry it drives
    if new_mode == "off":
        uninstall()
        return
    with _lock:
        if _mode == "off":
            for target, name, listener in _LISTENERS:
                event.listen(target, name, listener)
            before_task_publish.connect(_on_publish, weak=False, dispatch_uid=__name__)
        _mode = new_mode


def uninstall() -> None:
    """Remove every listener ``install`` added (a no-op when not installed)."""
    global _mode  # noqa: PLW0603
    with _lock:
        if _mode == "off":
            return
        for target, name, listener in _LISTENERS:
            event.remove(target, name, listener)
        before_task_publish.disconnect(_on_publish, dispatch_uid=__name__)
        _mode = "off"


def _track(session: Session) -> _Transaction:
    return _sessions.open.setdefault(session, _Transaction())


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # autobegun by session.add() too, before any connection
        _track(session)


def _after_begin(session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
    _track(session).connections.add(connection)


def _after_flush(session: Session, _flush_context: Any) -> None:
    _track(session).wrote = True


def _settle(session: Session, *_: Any) -> None:
    """Forget the session once its outermost transaction is over (savepoints end inside it)."""
    root = session.get_transaction()
    if root is None or not root.is_active:
        _sessions.open.pop(session, None)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        _sessions.open.pop(session, None)


def _after_cursor_execute(
    conn: Connection, _cursor: Any, statement: str, _params: Any, context: ExecutionContext, _many: bool
) -> None:
    """A Core write on a session's connection (``add_message``'s INSERT) is a pending write too."""
    if not _sessions.open:
        return
    if not (context.isinsert or context.isupdate or _WRITE.match(statement)):
        return
    for transaction in _sessions.open.values():
        if conn in transaction.connections:
            transaction.wrote = True


_LISTENERS: tuple[tuple[Any, str, Any], ...] = (
    (Session, "after_transaction_create", _after_transaction_create),
    (Session, "after_begin", _after_begin),
    (Session, "after_flush", _after_flush),
    (Session, "after_commit", _settle),
    (Session, "after_rollback", _settle),
    (Session, "after_soft_rollback", _settle),
    (Session, "after_transaction_end", _after_transaction_end),
    (Engine, "after_cursor_execute", _after_cursor_execute),
)


def _writing_sessions() -> list[Session]:
    """This thread's sessions whose open transaction has written or is about to."""
    found = []
    for session, transaction in list(_sessions.open.items()):
        root = session.get_transaction()
        if root is None or not root.is_active:
            continue
        if transaction.wrote or session.new or session.dirty or session.deleted:
            found.append(session)
    return found


def _caller() -> tuple[str, int, int]:
    """The file and line that published (outside Celery, kombu and this module), and its stacklevel."""
    frame = sys._getframe(2)
    level = 2  # that frame, counted from warnings.warn in _on_publish
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(_SKIPPED_FRAMES):
        frame = frame.f_back
        level += 1
    return frame.f_code.co_filename, frame.f_lineno, level


def _on_publish(sender: str | None = None, **_: Any) -> None:
    if _mode == "off" or not _writing_sessions():
        return
    filename, lineno, stacklevel = _caller()
    message = (
        f"Celery task {sender!r} published inside a database transaction with pending writes "
        f"({filename}:{lineno}): it may run before the commit, or for data that is rolled back. "
        "Add an outbox message to the transaction instead (Outbox.add), or publish after the commit."
    )
    log.error("outbox.unsafe_dispatch", task=sender, where=f"{filename}:{lineno}", mode=_mode)
    if _mode == "raise":
        raise UnsafeDispatch(message)
    try:
        warnings.warn(message, UnsafeDispatchWarning, stacklevel=stacklevel)
    except UnsafeDispatchWarning as error:  # warnings are errors here: Celery would swallow it
        raise UnsafeDispatch(message) from error
