"""A Celery worker's database: the engine made on first use, never at import, never across a fork."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from flask_outbox.db import create_db_engine

__all__ = ["WorkerDatabase"]


class WorkerDatabase:
    """One engine per process; ``after_fork`` (on ``worker_process_init``) drops what the parent made.

    ``idle_in_transaction_seconds`` (Postgres; 0: no bound) ends a session that sits that long inside
    a transaction: a worker process that hangs mid-delivery (stopped, or stuck in a call that never
    returns) would otherwise hold its inbox row for ever, and the copy of its message that another
    process gets (a restore after the visibility timeout, a re-drive) would wait behind it for ever.
    """

    def __init__(self, url: str, pool_size: int = 2, idle_in_transaction_seconds: float = 0) -> None:
        self._url = url
        self._pool_size = pool_size
        self._idle_bound_ms = int(idle_in_transaction_seconds * 1000)
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_db_engine(
                self._url, pool_size=self._pool_size, idle_in_transaction_ms=self._idle_bound_ms
            )
        return self._engine

    def session(self) -> Session:
        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        return self._sessions()

    def after_fork(self) -> None:
        """Connections inherited from the parent are not ours to use: drop them without closing."""
        if self._engine is not None:
            self._engine.dispose(close=False)
