"""Operator commands: ``python -m invoice_worker migrate | invoices | dead-letters list``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy import select

from invoice_worker.database import InvoiceDatabase
from invoice_worker.migrations_cli import upgrade
from invoice_worker.models import DeadLetter, Invoice
from shared.config import Settings

__all__ = ["main"]


def _list_dead_letters(database: InvoiceDatabase) -> int:
    with database.session() as session:
        letters = session.scalars(select(DeadLetter).order_by(DeadLetter.id)).all()
    for letter in letters:
        state = f"replayed {letter.replayed_at:%Y-%m-%dT%H:%M:%SZ}" if letter.replayed_at else "pending"
        print(
            f"{letter.id}\t{letter.message_id}\t{letter.attempts}\t{state}\t{letter.reason.splitlines()[0]}"
        )
    return 0


def _list_invoices(database: InvoiceDatabase, limit: int) -> int:
    with database.session() as session:
        invoices = session.scalars(select(Invoice).order_by(Invoice.id.desc()).limit(limit)).all()
    for invoice in invoices:
        print(f"{invoice.number}\torder {invoice.order_id}\t{invoice.amount_total} {invoice.currency}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m invoice_worker")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="upgrade the invoices database to the latest schema")
    listing = commands.add_parser("invoices", help="show the newest invoices")
    listing.add_argument("--limit", type=int, default=20)
    dead = commands.add_parser("dead-letters", help="inspect messages that could not be processed")
    dead.add_argument("action", choices=["list"])
    args = parser.parse_args(argv)

    settings = Settings()
    settings.ensure_var_dir()
    if args.command == "migrate":
        upgrade(settings.invoices_database_url)
        return 0
    if args.command == "invoices":
        return _list_invoices(InvoiceDatabase(settings), args.limit)
    return _list_dead_letters(InvoiceDatabase(settings))


if __name__ == "__main__":
    sys.exit(main())
