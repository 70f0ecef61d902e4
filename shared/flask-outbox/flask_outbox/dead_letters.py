"""Operating on an inbox: list parked messages, replay them through the same consumer, prune.

``add_commands`` adds ``dead-letters list|replay`` and ``prune`` to a service's command line and
``run_command`` runs them on the service's ``InboxWorker``; ``main`` is both, for a consumer with no
other commands (``python -m order_service.worker dead-letters list``).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select, update

from flask_outbox.db import utcnow
from flask_outbox.logs import configure_logging
from flask_outbox.retention import InboxRetention, prune_inbox
from flask_outbox.signing import BAD_SIGNATURE
from flask_outbox.worker import InboxWorker

__all__ = ["Replay", "add_commands", "main", "pending_ids", "replay", "run_command"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Replay:
    letter_id: int
    message_id: uuid.UUID
    outcome: str
    succeeded: bool


def pending_ids(worker: InboxWorker) -> list[int]:
    letters = worker.inbox.dead_letters
    with worker.database.session() as session:
        query = select(letters.c.id).where(letters.c.replayed_at.is_(None)).order_by(letters.c.id)
        return list(session.scalars(query))


def replay(worker: InboxWorker, letter_id: int) -> Replay:
    """Apply the parked message again; the inbox makes a second replay (or a late redelivery) a no-op.

    A replay that fails again stays pending, with the new reason and one more attempt. A message
    refused for its signature is never replayed: it did not come from a relay, so nothing vouches for it.
    """
    letters = worker.inbox.dead_letters
    with worker.database.session() as session:
        letter = session.execute(select(letters).where(letters.c.id == letter_id)).one_or_none()
    if letter is None:
        raise LookupError(f"no dead letter {letter_id}")
    message_id, payload = letter.message_id, letter.payload
    if letter.reason.startswith(BAD_SIGNATURE):
        log.warning("dead_letter.replay_refused", letter_id=letter_id, message_id=str(message_id))
        return Replay(letter_id, message_id, f"not replayed: {letter.reason}", succeeded=False)
    structlog.contextvars.bind_contextvars(message_id=str(message_id))
    try:
        outcome = worker.consumer(letter.task_name).apply(message_id, payload)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        with worker.database.session() as session:
            session.execute(
                update(letters)
                .where(letters.c.id == letter_id)
                .values(reason=reason[:4000], attempts=letters.c.attempts + 1)
            )
            session.commit()
        log.warning("dead_letter.replay_failed", letter_id=letter_id, error=reason)
        return Replay(letter_id, message_id, reason, succeeded=False)
    finally:
        structlog.contextvars.clear_contextvars()
    with worker.database.session() as session:
        session.execute(
            update(letters)
            .where(letters.c.id == letter_id, letters.c.replayed_at.is_(None))
            .values(replayed_at=utcnow())
        )
        session.commit()
    log.info("dead_letter.replayed", letter_id=letter_id, message_id=str(message_id), outcome=outcome)
    return Replay(letter_id, message_id, outcome, succeeded=True)


def add_commands(commands: Any) -> None:
    """Add ``dead-letters list|replay`` and ``prune`` to an argparse sub-parsers object."""
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


def main(worker: InboxWorker, prog: str, argv: Sequence[str] | None = None) -> int:
    """A consumer's operator commands alone: ``<prog> dead-letters list|replay`` and ``<prog> prune``."""
    parser = argparse.ArgumentParser(prog=prog)
    add_commands(parser.add_subparsers(dest="command", required=True))
    configure_logging(worker.settings.log_level, worker.settings.log_format)
    try:
        return run_command(parser.parse_args(argv), worker)
    finally:
        worker.database.engine.dispose()


def run_command(args: argparse.Namespace, worker: InboxWorker) -> int:
    """Run a command ``add_commands`` added; the exit status."""
    if args.command == "prune":
        return _prune(worker)
    if args.action == "list":
        return _list(worker, args.all)
    return _replay(worker, args.id, args.all)


def _list(worker: InboxWorker, show_all: bool) -> int:
    letters = worker.inbox.dead_letters
    query = select(letters).order_by(letters.c.id)
    if not show_all:
        query = query.where(letters.c.replayed_at.is_(None))
    with worker.database.session() as session:
        rows = session.execute(query).all()
    for letter in rows:
        state = f"replayed {letter.replayed_at:%Y-%m-%dT%H:%M:%SZ}" if letter.replayed_at else "pending"
        reason = letter.reason.splitlines()[0] if letter.reason else ""
        print(f"{letter.id}\t{letter.message_id}\t{letter.attempts}\t{state}\t{reason}")
    return 0


def _replay(worker: InboxWorker, letter_id: int | None, replay_all: bool) -> int:
    if replay_all == (letter_id is not None):
        print("replay takes a dead-letter ID or --all", file=sys.stderr)
        return 2
    ids = pending_ids(worker) if replay_all else [letter_id] if letter_id is not None else []
    failures = 0
    for one in ids:
        try:
            result = replay(worker, one)
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        failures += not result.succeeded
        state = "ok" if result.succeeded else "failed"
        print(f"{result.letter_id}\t{result.message_id}\t{state}\t{result.outcome}")
    print(f"replayed {len(ids) - failures} of {len(ids)}", file=sys.stderr)
    return 1 if failures else 0


def _prune(worker: InboxWorker) -> int:
    pruned = prune_inbox(worker.database.engine, worker.inbox, InboxRetention.from_settings(worker.settings))
    counts = (
        f"processed_messages={pruned.processed_messages} message_deliveries={pruned.message_deliveries} "
        f"dead_letters={pruned.dead_letters}"
    )
    print(f"pruned {counts}")
    if pruned.skipped:
        print("another process holds the prune lock: it is pruning the rest", file=sys.stderr)
    return 0
