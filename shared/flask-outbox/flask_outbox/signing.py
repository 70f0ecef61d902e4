"""Signed messages: only the pipeline's own processes can make a message its consumers apply.

Anyone who can write to the broker can push a Celery task. The relay signs each message it publishes
with HMAC-SHA256 under ``MESSAGE_SIGNING_KEY`` (a secret only the relays and consuming workers hold)
and sends the signature in the ``outbox_signature`` header; the consumer checks it, in constant
time, before the inbox or the handler sees the message (``flask_outbox.consumer``). What is signed
decides the effect: the message id (the inbox's dedup key), the topic (which handler) and the payload
as canonical JSON (sorted keys, no spaces: the same bytes whichever JSON encoder carried it). The other
headers (correlation id, trace context) only label logs and traces, and a publish span rewrites the
trace context, so they are not signed.

The embedded mode (the file broker under ``VAR_DIR``: no broker to reach from outside) generates its
key once into ``VAR_DIR/signing-key``, so ``make run`` needs no configuration; every other mode
refuses to start without a key that could not be guessed.

Rotation with no message refused: ``MESSAGE_SIGNING_KEY=new,old`` signs with the first key and accepts
a signature by any of them (docs/operations.md gives the three steps). Each key must pass the same checks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from flask_outbox.settings import PipelineSettings

__all__ = [
    "BAD_SIGNATURE",
    "MIN_KEY_LENGTH",
    "SIGNATURE_HEADER",
    "MessageSigner",
    "WeakSigningKey",
]

SIGNATURE_HEADER: Final = "outbox_signature"
"""The Celery message header (and batch entry header) that carries a message's signature."""

BAD_SIGNATURE: Final = "bad signature"
"""How a dead letter's reason starts when its message was refused for its signature: never replayed."""

MIN_KEY_LENGTH: Final = 32

_KEY_FILE = "signing-key"
_VERSION = b"outbox-hmac-sha256-v1"
_canonical = cast(
    Callable[[object], str], json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
)
_PLACEHOLDER = re.compile(
    r"change.?me|replace.?me|your.?(signing.?)?key|placeholder|example|secret|password|^(.)\2*$",
    re.IGNORECASE,
)
_MAKE_ONE = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'


class WeakSigningKey(ValueError):
    """``MESSAGE_SIGNING_KEY`` is missing or could be guessed: the relay or worker refuses to start."""


def _generated_key(var_dir: Path) -> str:
    """The embedded mode's key, created once (mode 0600, all or nothing) and shared by its processes."""
    path = var_dir / _KEY_FILE
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{_KEY_FILE}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)  # exclusive: a concurrent process reads the one whole key that won
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def _checked(keys: str) -> list[bytes]:
    """The keys of ``MESSAGE_SIGNING_KEY`` (``new,old`` during a rotation), each one checked."""
    if not keys:
        raise WeakSigningKey(
            "MESSAGE_SIGNING_KEY is not set: outside the embedded mode every relay and consuming worker "
            f"needs the same secret to sign and check messages; {_MAKE_ONE}"
        )
    listed = [key.strip() for key in keys.split(",")]
    for position, key in enumerate(listed, start=1):
        name = (
            "MESSAGE_SIGNING_KEY"
            if len(listed) == 1
            else f"MESSAGE_SIGNING_KEY (key {position} of {len(listed)})"
        )
        if len(key) < MIN_KEY_LENGTH:
            raise WeakSigningKey(
                f"{name} has {len(key)} characters, fewer than {MIN_KEY_LENGTH}; {_MAKE_ONE}"
            )
        if _PLACEHOLDER.search(key):
            raise WeakSigningKey(f"{name} is a placeholder, not a key; {_MAKE_ONE}")
    return [key.encode() for key in listed]


def _signed_bytes(message_id: uuid.UUID, topic: str, payload: Any) -> bytes:
    """What a signature covers: the message's id, topic and canonical payload."""
    return b"\n".join((_VERSION, str(message_id).encode(), topic.encode(), _canonical(payload).encode()))


@dataclass(frozen=True, slots=True)
class MessageSigner:
    """Signs messages with one key and checks them against it and any earlier key a rotation still
    accepts (HMAC-SHA256)."""

    key: bytes = field(repr=False)
    previous: tuple[bytes, ...] = field(default=(), repr=False)
    """Keys whose signatures still verify while a rotation is under way (``MESSAGE_SIGNING_KEY=new,old``)."""

    @classmethod
    def from_settings(cls, settings: PipelineSettings) -> MessageSigner:
        """``MESSAGE_SIGNING_KEY``; unset in the embedded mode, the one generated under ``VAR_DIR``.

        Raises ``WeakSigningKey`` for a missing, short or placeholder key anywhere else.
        """
        keys = settings.message_signing_key
        if not keys and settings.uses_embedded_broker:
            keys = _generated_key(settings.var_dir)
        first, *previous = _checked(keys)
        return cls(first, tuple(previous))

    def sign(self, message_id: uuid.UUID, topic: str, payload: Any) -> str:
        """The signature of one message: hex HMAC-SHA256 of its id, topic and canonical payload."""
        return hmac.digest(self.key, _signed_bytes(message_id, topic, payload), hashlib.sha256).hex()

    def signed_headers(
        self, message_id: uuid.UUID, topic: str, payload: Any, headers: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``headers`` with the message's signature added."""
        return {**headers, SIGNATURE_HEADER: self.sign(message_id, topic, payload)}

    def verifies(self, message_id: uuid.UUID, topic: str, payload: Any, signature: object) -> bool:
        """Whether ``signature`` is this message's under one of the keys (compared in constant time);
        False for none at all."""
        if not isinstance(signature, str):
            return False
        signed = _signed_bytes(message_id, topic, payload)
        return any(
            hmac.compare_digest(signature, hmac.digest(key, signed, hashlib.sha256).hex())
            for key in (self.key, *self.previous)
        )
