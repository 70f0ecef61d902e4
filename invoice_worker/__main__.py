"""Operator commands: ``python -m invoice_worker migrate | invoices | dead-letters … | prune``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flask_outbox import WorkerDatabase, add_inbox_commands, configure_logging, run_inbox_command
from sqlalchemy import select

from invoice_worker.migrations_cli import upgrade
from invoice_worker.models import Invoice
from shared.config import Settings

__all__ = ["main"]


def _list_invoices(database: WorkerDatabase, limit: int) -> int:
    with database.session() as session:
        invoices = session.scalars(select(Invoice).order_by(Invoice.id.desc()).limit(limit)).all()
    for invoice in invoices:
        print(f"{invoice.number}\torder {invoice.order_id}\t{invoice.amount_total} {invoice.currency}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m invoice_worker")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="upgrade the invoices database to the latest schema")
    listing = commands.add_parser("invoices", help="show the newest invoices")
    listing.add_argument("--limit", type=int, default=20)
    add_inbox_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
        if args.command != "migrate":
            # Imported here: the module builds the worker from the environment, which may be refused.
            from invoice_worker.celery_app import build_worker

            worker = build_worker(settings)  # the consumer the dead letters are replayed through
    except ValueError as exc:  # settings whose relations are wrong (e.g. a retention too short), at start
        print(str(exc), file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    settings.ensure_var_dir()
    if args.command == "migrate":
        upgrade(settings.invoices_database_url)
        return 0
    try:
        if args.command == "invoices":
            return _list_invoices(worker.database, args.limit)
        return run_inbox_command(args, worker)
    finally:
        worker.database.engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
