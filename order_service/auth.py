"""API keys: ``Authorization: Bearer <key>``, stored only as SHA-256 digests.

Keys come from two places: ``API_KEYS`` (comma-separated; each entry a raw key or ``sha256:<hex>``,
so an operator can keep usable secrets out of compose files) and the ``api_keys`` table
(``models.ApiKey``) managed with ``flask --app order_service api-keys create|revoke`` (``cli``;
rotation without a restart). SHA-256 is enough
because keys are 256-bit random tokens, not passwords: there is nothing to brute-force. Configured
digests are compared with ``hmac.compare_digest`` over the whole set; a table lookup is by digest,
which reveals nothing usable about the key itself. With SQLite and no key configured (embedded mode)
a dev key is generated once into ``var/dev-api-key`` and logged, so every gunicorn worker shares it.

A stored key found valid is remembered for ``STORED_KEY_CACHE_SECONDS`` per process, so a client's
requests do not each pay a lookup; revoking a key therefore takes up to that long to reach API
processes other than the one that ran the command.

Outside the embedded mode a raw key shorter than ``MIN_RAW_KEY_LENGTH`` or a known placeholder (such
as a copied ``.env.example``) refuses to start (``WeakApiKey``): such a key *can* be guessed. Guessing
is also throttled: a request without a valid key counts against its client address
(``AUTH_FAILURE_RATE_LIMIT``), and an address over that limit gets a 429 before any lookup.
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
    "known_key",
    "new_key",
]

log = structlog.get_logger(__name__)

PROTECTED_BLUEPRINTS = frozenset({"orders"})
_PREFIX = "sha256:"
_KEY_RING: AppState[KeyRing] = AppState("order_service.keys")
_FAILURES: AppState[FailedAuthLimit] = AppState("order_service.failed_auth")
_STORED: AppState[StoredKeyCache] = AppState("order_service.stored_keys")
STORED_KEY_CACHE_SECONDS = 5.0
"""How long a process trusts a stored key it found valid: how late a revocation may take effect."""
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


@dataclass
class StoredKeyCache:
    """Stored keys found valid, per process, each trusted for ``ttl`` seconds (valid ones only)."""

    ttl: float = STORED_KEY_CACHE_SECONDS
    limit: int = 1024
    _until: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def valid(self, key_hash: str) -> bool:
        until = self._until.get(key_hash)
        return until is not None and until > time.monotonic()

    def remember(self, key_hash: str) -> None:
        with self._lock:
            if len(self._until) >= self.limit:
                self._until.clear()  # bounded: a flood of distinct keys costs lookups, never memory
            self._until[key_hash] = time.monotonic() + self.ttl

    def forget_all(self) -> None:
        with self._lock:
            self._until.clear()


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
    "(or put its 'flask --app order_service api-keys digest <key>' in API_KEYS)."
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


def _throttle_guessing() -> None:
    """Refuse (429) a client address over its limit of requests without a valid key, before any lookup."""
    wait = _FAILURES.get().retry_after(_address())
    if wait is not None:
        log.info("api.auth_throttled", address=_address(), retry_after=wait)
        detail = "Too many requests without a valid API key from this address; retry later."
        raise TooManyRequests(detail, retry_after=wait)


def known_key(key_hash: str, *, cached: bool = False) -> bool:
    """A configured key, or a stored one not revoked (the pipeline page re-checks its session with it).

    Throttled per client address: over its limit a request is a 429 before the lookup, and every
    unknown key counts against the address (the pipeline page's sign-in too).
    """
    _throttle_guessing()
    if _KEY_RING.get().configured(key_hash):
        return True
    cache = _STORED.get()
    if cached and cache.valid(key_hash):  # the API's hot path; the pipeline page re-checks for real
        return True
    stored = select(ApiKey.id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    if db.session.scalar(stored) is not None:
        cache.remember(key_hash)
        return True
    _FAILURES.get().failed(_address())
    return False


def authenticate() -> Response | None:
    """``before_request``: the order endpoints need a key; health, docs and OpenAPI stay open."""
    if request.blueprint not in PROTECTED_BLUEPRINTS:
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _throttle_guessing()
        _FAILURES.get().failed(_address())
        return _unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    key_hash = digest(token.strip())
    if not known_key(key_hash, cached=True):
        log.info("api.key_refused", client=client_id(key_hash))
        return _unauthorized("The API key is not valid.", error="invalid_token")
    g.client_id = client_id(key_hash)
    return None


def forget_stored_keys() -> None:
    """Drop this process's cache of stored keys (after a revocation); others expire within its ttl."""
    _STORED.get().forget_all()


def init_auth(app: Flask, settings: Settings) -> None:
    """Register before any other ``before_request`` so the rate limiter sees the client id."""
    ring = _KEY_RING.init_app(app, KeyRing.from_settings(settings))
    _FAILURES.init_app(app, FailedAuthLimit.from_settings(settings))
    _STORED.init_app(app, StoredKeyCache())
    if ring.dev_key:
        log.warning("api.dev_key", key=ring.dev_key, usage=f"Authorization: Bearer {ring.dev_key}")
    elif not ring.digests:
        log.warning("api.no_keys_configured", hint="set API_KEYS or run 'flask api-keys create'")
    app.before_request(authenticate)
