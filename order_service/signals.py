"""Domain events of the order service, as blinker signals in a private namespace."""

from __future__ import annotations

from blinker import Namespace

__all__ = ["Veto", "order_placed"]

_signals = Namespace()

order_placed = _signals.signal(
    "order-placed",
    doc="""Sent inside the order's transaction, after the order and its lines are written and before commit.

    Keyword data: ``order`` (the ``Order`` as written, not tracked by the session) and ``session``
    (its session). Receivers may
    only add rows to that session (outbox messages); they never commit or call a broker. A
    receiver that raises, or returns a ``Veto``, rolls the whole order back.
    """,
)


class Veto:
    """Returned by a receiver to refuse the order; the reason reaches the client."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Veto({self.reason!r})"
