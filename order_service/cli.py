"""Every ``flask --app order_service ...`` command group of the order service.

``api-keys create|revoke|digest`` (the ``api_keys`` table, see ``auth``; ``digest`` reads its key
from stdin) and ``idempotency-keys prune`` (see ``idempotency``); ``db`` comes from Flask-Migrate.
Each command is its own unit of work: it commits what it changed before it prints.
"""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import AppGroup
from flask_outbox import utcnow
from sqlalchemy import select

from order_service import auth, idempotency
from order_service.extensions import db
from order_service.models import ApiKey

__all__ = ["api_keys_cli", "idempotency_cli", "init_cli"]

api_keys_cli = AppGroup("api-keys", help="Manage the API keys stored in the orders database.")
idempotency_cli = AppGroup("idempotency-keys", help="Maintain stored Idempotency-Key responses.")


@api_keys_cli.command("create")
@click.argument("name")
def _create_key(name: str) -> None:
    """Create a key and print it once; only its digest is stored."""
    key = auth.new_key()
    db.session.add(ApiKey(name=name, key_hash=auth.digest(key)))
    db.session.commit()
    click.echo(key)


@api_keys_cli.command("revoke")
@click.argument("name")
def _revoke_key(name: str) -> None:
    stored = db.session.scalar(select(ApiKey).where(ApiKey.name == name))
    if stored is None:
        raise click.ClickException(f"no key named {name!r}")
    stored.revoked_at = utcnow()
    db.session.commit()
    auth.forget_stored_keys()  # this process at once; API processes within STORED_KEY_CACHE_SECONDS


@api_keys_cli.command("digest")
def _digest_key() -> None:
    """Print the API_KEYS entry for a key read from stdin (a hidden prompt on a terminal).

    Never an argument: a key there lands in the shell history and in every process listing.
    """
    key = str(click.prompt("API key", hide_input=True)) if sys.stdin.isatty() else sys.stdin.readline()
    if not key.strip():
        raise click.ClickException("no key on stdin")
    click.echo(auth.api_keys_entry(key.strip()))


@idempotency_cli.command("prune")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help=f"Rows per DELETE (default {idempotency.PRUNE_BATCH})",
)
def _prune_keys(batch: int | None) -> None:
    """Delete every expired key now, in bounded batches (one short transaction each)."""
    removed, batches = idempotency.prune_all(db.engine, batch=batch or idempotency.PRUNE_BATCH)
    click.echo(f"pruned {removed} expired idempotency keys in {batches} batches")


def init_cli(app: Flask) -> None:
    app.cli.add_command(api_keys_cli)
    app.cli.add_command(idempotency_cli)
