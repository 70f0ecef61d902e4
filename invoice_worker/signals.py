"""Domain events of the invoice worker, as blinker signals in a private namespace."""

from __future__ import annotations

from blinker import Namespace

__all__ = ["invoice_created", "invoice_requested_again"]

_signals = Namespace()

invoice_created = _signals.signal(
    "invoice-created",
    doc="""Sent once per invoice, inside the invoice's transaction, after it is numbered and before commit.

    Keyword data: ``invoice`` (the numbered ``Invoice``), ``causation_id`` (the ``message_id`` of
    the ``order.placed`` it answers) and ``session`` (its session). Receivers may only add rows to
    that session (outbox messages); they never commit or call a broker. A receiver that raises
    rolls the invoice back with it.
    """,
)

invoice_requested_again = _signals.signal(
    "invoice-requested-again",
    doc="""Sent when an ``order.placed`` arrives for an order that already has its invoice.

    The order side re-drives ``order.placed`` while it has not heard back (the broker may have lost
    the answer), so the worker answers again. Same keyword data as ``invoice_created``, with
    ``causation_id`` the incoming message's id; sent inside a short transaction of its own, before
    commit. Not a new invoice: receivers that count invoices listen to ``invoice_created`` only.
    """,
)
