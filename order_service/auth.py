"""API keys: ``Authorization: Bearer <key>``, stored only as SHA-256 digests.

Keys come from two places: ``API_KEYS`` (comma-separated; each entry a raw key or ``sha256:<hex>``,
so an operator can keep usable secrets out of compose files) and the ``api_keys`` table
(``models.ApiKey``) managed with ``flask --app order_service api-keys create|revoke`` (``cli``;
rotation without a restart). SHA-256 is enough
because keys are 256-bit random tokens, not passwords: there is nothing to brute-force. Configured
digests are compared with ``hmac.compare_digest`` over the whole set; a table lookup is by digest,
which reveals nothing usable about the key itself. With SQLite and no key configured (embedded mode)
a dev key is generated once into ``var/dev-api-key`` and logged, so every gunicorn worker shares it.

Each process keeps the digests of every valid stored key, reloaded at most every
``STORED_KEY_CACHE_SECONDS`` (``StoredKeys``), so a client's requests do not each pay a lookup;
revoking a key therefore takes up to that long to reach API processes other than the one that ran
the command.

Outside the embedded mode a raw key shorter than ``MIN_RAW_KEY_LENGTH`` or a known placeholder (such
as a copied ``.env.example``) refuses to start (``WeakApiKey``): such a key *can* be guessed. Guessing
is also throttled (``AUTH_FAILURE_RATE_LIMIT``), in this order (``presented_key_valid``): a configured
key (constant time) or one in the stored keys' snapshot passes, judged only by its own ``RATE_LIMIT``;
otherwise a client address or presented key over its budget of failures gets a 429 with no lookup;
otherwise a key not yet in the snapshot is looked up by digest, and a failure counts against both the
address and the key. So a guesser behind a shared NAT or proxy never locks out the valid keys there.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field

import structlog
from flask import Flask, Response, g, request
from sqlalchemy import select
from werkzeug.exceptions import TooManyRequests

from order_service.extensions import AppState, db
from order_service.models import ApiKey
from order_service.problems import problem
from order_service.ratelimit import FailedAuthLimit
from shared.config import Settings

__all__ = [
    "MIN_RAW_KEY_LENGTH",
    "STORED_KEY_CACHE_SECONDS",
    "KeyRing",
    "WeakApiKey",
    "api_keys_entry",
    "client_id",
    "digest",
    "forget_stored_keys",
    "init_auth",
    "key_valid",
    "new_key",
    "presented_key_valid",
]

log = structlog.get_logger(__name__)

PROTECTED_BLUEPRINTS = frozenset({"orders"})
_PREFIX = "sha256:"
_KEY_RING: AppState[KeyRing] = AppState("order_service.keys")
_FAILURES: AppState[FailedAuthLimit] = AppState("order_service.failed_auth")
_STORED: AppState[StoredKeys] = AppState("order_service.stored_keys")
STORED_KEY_CACHE_SECONDS = 5.0
"""How long a process trusts its snapshot of the valid stored keys: how late a revocation may take effect."""
_DIGEST = re.compile(r"^[0-9a-f]{64}$")

MIN_RAW_KEY_LENGTH = 32
"""``new_key`` makes 47 characters (256 random bits); a raw key must be at least this long in production."""

_PLACEHOLDER = re.compile(
    r"change.?me|replace.?me|your.?(api.?)?key|placeholder|example|secret|password|^(.)\2*$",
    re.IGNORECASE,
)
"""Values left in place of a key (``.env.example`` once shipped ``change-me-to-a-long-random-key``)."""


class WeakApiKey(ValueError):
    """``API_KEYS`` holds a key that could be guessed; the service refuses to start with it."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_keys_entry(key: str) -> str:
    """The ``API_KEYS`` entry for ``key`` that does not contain the key itself."""
    return _PREFIX + digest(key)


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
        """The configured keys; raises ``WeakApiKey`` for a guessable one outside the embedded mode."""
        embedded = settings.orders_database_url.startswith("sqlite")
        entries = [entry.strip() for entry in settings.api_keys.split(",") if entry.strip()]
        for position, entry in enumerate(entries, start=1):
            _check_entry(position, entry, embedded=embedded)
        digests = tuple(
            e.removeprefix(_PREFIX).lower() if e.startswith(_PREFIX) else digest(e) for e in entries
        )
        if digests or not embedded:
            return cls(digests)
        key = _dev_key(settings)
        return cls((digest(key),), dev_key=key)

    def configured(self, key_hash: str) -> bool:
        matches = [hmac.compare_digest(key_hash, known) for known in self.digests]
        return any(matches)


def _valid_stored_digests() -> list[str]:
    return list(db.session.scalars(select(ApiKey.key_hash).where(ApiKey.revoked_at.is_(None))))


@dataclass
class StoredKeys:
    """The digests of the valid stored keys, per process: one query per ``ttl`` however many requests.

    A key created since the last load is found by ``look_up`` (and added); a flood of unknown keys
    from a throttled address or key never reaches the database, and a valid key still passes there.
    """

    ttl: float = STORED_KEY_CACHE_SECONDS
    _digests: frozenset[str] = frozenset()
    _until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def valid(self, key_hash: str) -> bool:
        with self._lock:
            if self._until <= time.monotonic():
                self._digests = frozenset(_valid_stored_digests())
                self._until = time.monotonic() + self.ttl
            return key_hash in self._digests

    def look_up(self, key_hash: str) -> bool:
        """Ask the database for this one key (created since the last load?); remember it if valid."""
        stored = select(ApiKey.id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        if db.session.scalar(stored) is None:
            return False
        with self._lock:
            self._digests |= {key_hash}
        return True

    def forget_all(self) -> None:
        with self._lock:
            self._until = 0.0


def _check_entry(position: int, entry: str, *, embedded: bool) -> None:
    """Refuse a malformed digest anywhere, and a guessable raw key outside the embedded mode."""
    where = f"API_KEYS entry {position}"  # never the key itself: it would land in the logs
    if entry.startswith(_PREFIX):
        if not _DIGEST.match(entry.removeprefix(_PREFIX).lower()):
            raise WeakApiKey(f"{where} is not 'sha256:' followed by 64 hex digits")
        return
    if embedded:
        return
    if _PLACEHOLDER.search(entry):
        raise WeakApiKey(f"{where} is a placeholder, not a key. {_MAKE_ONE}")
    if len(entry) < MIN_RAW_KEY_LENGTH:
        raise WeakApiKey(
            f"{where} is {len(entry)} characters; a raw key needs at least {MIN_RAW_KEY_LENGTH}. {_MAKE_ONE}"
        )


_MAKE_ONE = (
    "Make one with: python -c \"import secrets; print('osk_' + secrets.token_urlsafe(32))\" "
    "(or put what 'flask --app order_service api-keys digest' prints for it, reading the key from stdin, "
    "in API_KEYS)."
)


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


def _address() -> str:
    return request.remote_addr or "unknown"


def _identities(key_hash: str | None) -> list[str]:
    """What a failure counts against: the client address, and the presented key's digest if any."""
    address = f"address:{_address()}"
    return [address] if key_hash is None else [address, f"key:{client_id(key_hash)}"]


def key_valid(key_hash: str) -> bool:
    """A configured key, or a stored one not revoked: the pipeline page re-checks its session with this.

    Never throttled nor counted: the digest comes from a signed session, not from a guess.
    """
    return _KEY_RING.get().configured(key_hash) or _STORED.get().look_up(key_hash)


def presented_key_valid(key_hash: str | None) -> bool:
    """Judge a key a client presented (Bearer header or sign-in form); ``None`` when it sent none.

    A valid key passes whatever its address did. Without one: 429 (``TooManyRequests``) while the
    address or the key is over its failure budget, before any lookup; otherwise a failure is counted.
    """
    if key_hash is not None and (_KEY_RING.get().configured(key_hash) or _STORED.get().valid(key_hash)):
        return True
    failures, identities = _FAILURES.get(), _identities(key_hash)
    wait = failures.retry_after(identities)
    if wait is not None:
        log.info("api.auth_throttled", address=_address(), retry_after=wait)
        detail = "Too many requests without a valid API key from this address or with this key; retry later."
        raise TooManyRequests(detail, retry_after=wait)
    if key_hash is not None and _STORED.get().look_up(key_hash):
        return True
    failures.failed(identities)
    return False


def authenticate() -> Response | None:
    """``before_request``: the order endpoints need a key; health, docs and OpenAPI stay open."""
    if request.blueprint not in PROTECTED_BLUEPRINTS:
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        presented_key_valid(None)
        return _unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    key_hash = digest(token.strip())
    if not presented_key_valid(key_hash):
        log.info("api.key_refused", client=client_id(key_hash))
        return _unauthorized("The API key is not valid.", error="invalid_token")
    g.client_id = client_id(key_hash)
    return None


def forget_stored_keys() -> None:
    """Reload this process's snapshot of stored keys (after a revocation); others within its ttl."""
    _STORED.get().forget_all()


def init_auth(app: Flask, settings: Settings) -> None:
    """Register before any other ``before_request`` so the rate limiter sees the client id."""
    ring = _KEY_RING.init_app(app, KeyRing.from_settings(settings))
    _FAILURES.init_app(app, FailedAuthLimit.from_settings(settings))
    _STORED.init_app(app, StoredKeys())
    if ring.dev_key:
        log.warning("api.dev_key", key=ring.dev_key, usage=f"Authorization: Bearer {ring.dev_key}")
    elif not ring.digests:
        log.warning("api.no_keys_configured", hint="set API_KEYS or run 'flask api-keys create'")
    app.before_request(authenticate)
