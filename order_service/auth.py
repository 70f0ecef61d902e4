"""API keys: ``Authorization: Bearer <key>``, stored only as SHA-256 digests.

Keys come from two places: ``API_KEYS`` (comma-separated; each entry a raw key or ``sha256:<hex>``,
so an operator can keep usable secrets out of compose files) and the ``api_keys`` table managed with
``flask --app order_service api-keys create|revoke`` (rotation without a restart). SHA-256 is enough
because keys are 256-bit random tokens, not passwords: there is nothing to brute-force. Configured
digests are compared with ``hmac.compare_digest`` over the whole set; a table lookup is by digest,
which reveals nothing usable about the key itself. With SQLite and no key configured (embedded mode)
a dev key is generated once into ``var/dev-api-key`` and logged, so every gunicorn worker shares it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime

import click
import structlog
from flask import Flask, Response, current_app, g, request
from flask.cli import AppGroup
from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, mapped_column

from order_service.extensions import db
from order_service.problems import problem
from shared.config import Settings
from shared.db import BigIntPK, UTCDateTime, utcnow

__all__ = ["ApiKey", "KeyRing", "client_id", "digest", "init_auth", "known_key", "new_key"]

log = structlog.get_logger(__name__)

PROTECTED_BLUEPRINTS = frozenset({"orders"})
_PREFIX = "sha256:"
_EXTENSION = "order_service.keys"


class ApiKey(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "osk_" + secrets.token_urlsafe(32)


def client_id(key_hash: str) -> str:
    """The non-secret id a key is known by in logs, rate limits and idempotency scopes."""
    return key_hash[:16]


@dataclass(frozen=True)
class KeyRing:
    digests: tuple[str, ...]
    dev_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries = [entry.strip() for entry in settings.api_keys.split(",") if entry.strip()]
        digests = tuple(
            e.removeprefix(_PREFIX).lower() if e.startswith(_PREFIX) else digest(e) for e in entries
        )
        if digests or not settings.orders_database_url.startswith("sqlite"):
            return cls(digests)
        key = _dev_key(settings)
        return cls((digest(key),), dev_key=key)

    def configured(self, key_hash: str) -> bool:
        matches = [hmac.compare_digest(key_hash, known) for known in self.digests]
        return any(matches)


def _dev_key(settings: Settings) -> str:
    """Read or create (exclusively, mode 0600) the embedded mode's key shared by all workers."""
    path = settings.var_dir / "dev-api-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = new_key()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _unauthorized(detail: str, error: str | None = None) -> Response:
    response = problem(401, "Unauthorized", detail)
    challenge = 'Bearer realm="orders"' + (f', error="{error}"' if error else "")
    response.headers["WWW-Authenticate"] = challenge
    return response


def known_key(key_hash: str) -> bool:
    """A configured key, or a stored one not revoked (the pipeline page re-checks its session with it)."""
    ring: KeyRing = current_app.extensions[_EXTENSION]
    if ring.configured(key_hash):
        return True
    stored = select(ApiKey.id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    return db.session.scalar(stored) is not None


def authenticate() -> Response | None:
    """``before_request``: the order endpoints need a key; health, docs and OpenAPI stay open."""
    if request.blueprint not in PROTECTED_BLUEPRINTS:
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    key_hash = digest(token.strip())
    if not known_key(key_hash):
        log.info("api.key_refused", client=client_id(key_hash))
        return _unauthorized("The API key is not valid.", error="invalid_token")
    g.client_id = client_id(key_hash)
    return None


api_keys_cli = AppGroup("api-keys", help="Manage the API keys stored in the orders database.")


@api_keys_cli.command("create")
@click.argument("name")
def _create(name: str) -> None:
    """Create a key and print it once; only its digest is stored."""
    key = new_key()
    db.session.add(ApiKey(name=name, key_hash=digest(key)))
    db.session.commit()
    click.echo(key)


@api_keys_cli.command("revoke")
@click.argument("name")
def _revoke(name: str) -> None:
    stored = db.session.scalar(select(ApiKey).where(ApiKey.name == name))
    if stored is None:
        raise click.ClickException(f"no key named {name!r}")
    stored.revoked_at = utcnow()
    db.session.commit()


@api_keys_cli.command("digest")
@click.argument("key")
def _digest(key: str) -> None:
    """Print the API_KEYS entry for a key without putting the key itself in the environment."""
    click.echo(_PREFIX + digest(key))


def init_auth(app: Flask, settings: Settings) -> None:
    """Register before any other ``before_request`` so the rate limiter sees the client id."""
    ring = KeyRing.from_settings(settings)
    app.extensions[_EXTENSION] = ring
    if ring.dev_key:
        log.warning("api.dev_key", key=ring.dev_key, usage=f"Authorization: Bearer {ring.dev_key}")
    elif not ring.digests:
        log.warning("api.no_keys_configured", hint="set API_KEYS or run 'flask api-keys create'")
    app.before_request(authenticate)
    app.cli.add_command(api_keys_cli)
