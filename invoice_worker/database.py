"""The worker's engine: created on first use, never at import, and never shared across a fork."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import create_db_engine

__all__ = ["InvoiceDatabase"]


class InvoiceDatabase:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_db_engine(self._settings.invoices_database_url, pool_size=2)
        return self._engine

    def session(self) -> Session:
        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        return self._sessions()

    def after_fork(self) -> None:
        """Connections inherited from the parent are not ours to use: drop them without closing."""
        if self._engine is not None:
            self._engine.dispose(close=False)
