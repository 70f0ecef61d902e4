"""Operator commands: ``python -m invoice_worker migrate | invoices | dead-letters … | prune``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flask_outbox.logs import configure_logging
from sqlalchemy import select

from invoice_worker.database import InvoiceDatabase
from invoice_worker.dead_letters import pending_ids, replay
from invoice_worker.migrations_cli import upgrade
from invoice_worker.models import DeadLetter, Invoice
from invoice_worker.retention import InboxRetention, prune_inbox
from shared.config import Settings

__all__ = ["main"]


def _list_dead_letters(database: InvoiceDatabase, show_all: bool) -> int:
    query = select(DeadLetter).order_by(DeadLetter.id)
    if not show_all:
        query = query.where(DeadLetter.replayed_at.is_(None))
    with database.session() as session:
        letters = session.scalars(query).all()
    for letter in letters:
        state = f"replayed {letter.replayed_at:%Y-%m-%dT%H:%M:%SZ}" if letter.replayed_at else "pending"
        reason = letter.reason.splitlines()[0] if letter.reason else ""
        print(f"{letter.id}\t{letter.message_id}\t{letter.attempts}\t{state}\t{reason}")
    return 0


def _replay(database: InvoiceDatabase, letter_id: int | None, replay_all: bool) -> int:
    if replay_all == (letter_id is not None):
        print("replay takes a dead-letter ID or --all", file=sys.stderr)
        return 2
    ids = pending_ids(database) if replay_all else [letter_id] if letter_id is not None else []
    failures = 0
    for one in ids:
        try:
            result = replay(database, one)
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        failures += not result.succeeded
        state = "ok" if result.succeeded else "failed"
        print(f"{result.letter_id}\t{result.message_id}\t{state}\t{result.outcome}")
    print(f"replayed {len(ids) - failures} of {len(ids)}", file=sys.stderr)
    return 1 if failures else 0


def _prune(database: InvoiceDatabase, settings: Settings) -> int:
    try:
        policy = InboxRetention.from_settings(settings)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    pruned = prune_inbox(database.engine, policy)
    counts = f"processed_messages={pruned.processed_messages} message_deliveries={pruned.message_deliveries}"
    print(f"pruned {counts}")
    if pruned.skipped:
        print("another process holds the prune lock: it is pruning the rest", file=sys.stderr)
    return 0


def _list_invoices(database: InvoiceDatabase, limit: int) -> int:
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
    dead = commands.add_parser("dead-letters", help="list or replay messages that could not be processed")
    actions = dead.add_subparsers(dest="action", required=True)
    dead_list = actions.add_parser("list", help="pending: id, message id, attempts, state, reason")
    dead_list.add_argument("--all", action="store_true", help="include replayed ones")
    dead_replay = actions.add_parser("replay", help="process dead letters again (idempotent)")
    dead_replay.add_argument("id", nargs="?", type=int)
    dead_replay.add_argument("--all", action="store_true", help="every pending dead letter")
    commands.add_parser(
        "prune", help="delete inbox rows (processed ids, delivery counts) older than INBOX_RETENTION_SECONDS"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.ensure_var_dir()
    if args.command == "migrate":
        upgrade(settings.invoices_database_url)
        return 0
    database = InvoiceDatabase(settings)
    try:
        if args.command == "invoices":
            return _list_invoices(database, args.limit)
        if args.command == "prune":
            return _prune(database, settings)
        if args.action == "list":
            return _list_dead_letters(database, args.all)
        return _replay(database, args.id, args.all)
    finally:
        database.engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
