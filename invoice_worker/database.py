"""The invoices database, as the invoice worker and its commands open it."""

from __future__ import annotations

from flask_outbox import WorkerDatabase

from shared.config import Settings

__all__ = ["InvoiceDatabase"]


class InvoiceDatabase(WorkerDatabase):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.invoices_database_url)
