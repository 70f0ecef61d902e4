"""The keyset cursor of ``GET /orders``: an opaque token for the (created_at, id) of a page's last order.

A cursor is base64url of ``<created_at ISO 8601 in UTC>|<order id>``. It is only a position, so any
position a client could encode is harmless; what must never happen is a token that reaches the
database and fails there (a naive timestamp, or one that overflows when moved to UTC). So ``decode``
accepts exactly what ``encode`` produces, byte for byte, and raises ``InvalidCursor`` for anything else.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["MAX_LENGTH", "InvalidCursor", "Position", "decode", "encode"]

MAX_LENGTH = 200
"""Longer than any cursor ``encode`` makes (about 90 characters); the query parameter's bound."""


class InvalidCursor(ValueError):
    """Not a cursor this API issued."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where the previous page ended; the next page starts strictly before it."""

    created_at: datetime
    order_id: uuid.UUID


def encode(created_at: datetime, order_id: uuid.UUID) -> str:
    """The cursor for a page that ended at this order (``created_at`` must be aware)."""
    if created_at.tzinfo is None:
        raise ValueError("a cursor holds an aware timestamp")
    text = f"{created_at.astimezone(UTC).isoformat()}|{order_id}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode(cursor: str) -> Position:
    """The position in ``cursor``; ``InvalidCursor`` unless ``encode`` made exactly this token."""
    if len(cursor) > MAX_LENGTH:
        raise InvalidCursor("too long")
    try:
        raw = base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True)
        created_text, order_text = raw.decode("ascii").split("|")
        created_at = datetime.fromisoformat(created_text)
        order_id = uuid.UUID(order_text)
    except (ValueError, binascii.Error) as exc:  # UnicodeError is a ValueError
        raise InvalidCursor(str(exc)) from None
    if created_at.tzinfo is None:
        raise InvalidCursor("naive timestamp")
    try:
        canonical = encode(created_at, order_id)
    except OverflowError:  # e.g. year 1 at +01:00 is before the first instant UTC can hold
        raise InvalidCursor("timestamp out of range") from None
    if canonical != cursor:
        raise InvalidCursor("not in the form this API issues")
    return Position(created_at.astimezone(UTC), order_id)
