"""The Jepsen-style checker: what the client was told, what both databases hold, what the workers did.

``audit`` is a pure function from ``Evidence`` to ``Findings``, so a unit test can show that every
check can fail (tests/unit/test_checker.py). ``Checker`` gathers that evidence from a running
cluster (``tests.fault.evidence.Checker``) and waits for quiescence before a verdict is read.

Constraints hide what they prevent: ``UNIQUE(order_id)`` on invoices makes "two invoices for one
order" unobservable in the invoices table. So "doubled" is counted where no constraint filters:
order ids per Idempotency-Key, orders per accepted body, and ``invoice.created`` log lines (one per
committed invoice transaction) per order.

A log line is written after its COMMIT, so a worker SIGKILLed in between leaves an invoice with no
line. That is excused only when the invoice's message was delivered again afterwards (the killed
delivery was never acknowledged); a line too many is never excused.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Accepted",
    "Evidence",
    "Findings",
    "InvoiceRow",
    "Lateness",
    "OrderRow",
    "audit",
    "fingerprint",
]

Fingerprint = tuple[str, str, tuple[tuple[str, int, int], ...]]
"""(customer id, currency, lines as (sku, quantity, unit amount) in order): what makes a body unique."""


def fingerprint(body: Mapping[str, Any]) -> Fingerprint:
    lines = tuple((line["sku"], int(line["quantity"]), int(line["unit_amount"])) for line in body["lines"])
    return (str(body["customer_id"]), str(body["currency"]), lines)


@dataclass(frozen=True)
class Accepted:
    """One 201 the client received: the Idempotency-Key and body it sent, and the order id it was given."""

    key: str
    order_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class OrderRow:
    id: str
    customer_id: str
    currency: str
    amount_total: int
    lines: tuple[tuple[str, int, int], ...]
    created_at: datetime

    @property
    def fingerprint(self) -> Fingerprint:
        return (self.customer_id, self.currency, self.lines)


@dataclass(frozen=True)
class InvoiceRow:
    order_id: str
    customer_id: str
    currency: str
    amount_total: int
    created_at: datetime
    deliveries: int = 1
    """How often the message that made this invoice was delivered (``message_deliveries``)."""


@dataclass(frozen=True)
class Evidence:
    """Everything the verdict is computed from, read after quiescence."""

    accepted: Sequence[Accepted]
    orders: Sequence[OrderRow]
    invoices: Sequence[InvoiceRow]
    invoice_events: Mapping[str, int]
    """Order id -> ``invoice.created`` lines in the workers' JSON logs."""
    garbled_events: int = 0
    """Log lines that mention ``invoice.created`` but do not parse: effects that cannot be attributed."""
    last_fault_at: datetime | None = None
    """The database clock when the last fault was injected."""


@dataclass(frozen=True)
class Lateness:
    """Seconds from acceptance (``orders.created_at``) to invoice (``invoices.created_at``).

    ``max_after_fault`` is over the orders invoiced after the last fault, counted from the later of
    their acceptance and the last fault: "every accepted order is invoiced within N s of the last
    fault". ``max_plain_after_fault`` is plain acceptance -> invoice over the same orders.
    """

    count: int = 0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    after_fault: int = 0
    max_after_fault: float = 0.0
    max_plain_after_fault: float = 0.0


def _percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` of the values at or below it."""
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)] if ordered else 0.0


def lateness(evidence: Evidence) -> Lateness:
    orders = {o.id: o for o in evidence.orders}
    plain, after, plain_after = [], [], []
    fault = evidence.last_fault_at
    for invoice in evidence.invoices:
        order = orders.get(invoice.order_id)
        if order is None:
            continue
        seconds = (invoice.created_at - order.created_at).total_seconds()
        plain.append(seconds)
        if fault is None or invoice.created_at > fault:
            since = order.created_at if fault is None else max(order.created_at, fault)
            after.append((invoice.created_at - since).total_seconds())
            plain_after.append(seconds)
    plain.sort()
    return Lateness(
        count=len(plain),
        p50=_percentile(plain, 0.50),
        p99=_percentile(plain, 0.99),
        max=plain[-1] if plain else 0.0,
        after_fault=len(after),
        max_after_fault=max(after, default=0.0),
        max_plain_after_fault=max(plain_after, default=0.0),
    )


@dataclass(frozen=True)
class Findings:
    """The verdict: each field is one check's counterexamples (empty when the check passed)."""

    accepted: int
    committed: int
    invoiced: int
    effects: int
    not_committed: frozenset[str]
    not_invoiced: frozenset[str]
    orphan_invoices: frozenset[str]
    unaccepted_orders: frozenset[str]
    keys_with_many_ids: Mapping[str, frozenset[str]]
    bodies_not_once: Mapping[str, tuple[str, ...]]
    """First order id a 201 named for the body -> the orders in the database that match the body."""
    effects_not_once: Mapping[str, int]
    unlogged_effects: frozenset[str]
    """Invoiced orders with no line, whose message was delivered again: a worker SIGKILLed between
    COMMIT and its log line (the later deliveries found the message in the inbox)."""
    wrong_amounts: frozenset[str]
    garbled_events: int
    lateness: Lateness
    bound: float

    @property
    def lost(self) -> frozenset[str]:
        """Accepted but never committed, or committed and never invoiced."""
        return self.not_committed | self.not_invoiced

    @property
    def doubled(self) -> frozenset[str]:
        """Order ids that took part in a second order or a second invoice effect."""
        ids = set(self.orphan_invoices) | set(self.unaccepted_orders)
        ids.update(*self.keys_with_many_ids.values())
        for order_ids in self.bodies_not_once.values():
            if len(order_ids) > 1:
                ids.update(order_ids)
        ids.update(o for o, n in self.effects_not_once.items() if n > 1)
        return frozenset(ids)

    def failures(self) -> list[str]:
        checks = [
            (len(self.not_committed), "accepted (201) but not in the orders table"),
            (len(self.not_invoiced), "committed but not invoiced"),
            (len(self.orphan_invoices), "invoices for no committed order"),
            (len(self.unaccepted_orders), "committed orders no 201 named"),
            (len(self.keys_with_many_ids), "Idempotency-Keys answered with more than one order id"),
            (len(self.bodies_not_once), "accepted bodies not matching exactly one order"),
            (len(self.effects_not_once), "orders without exactly one invoice.created effect"),
            (len(self.wrong_amounts), "orders or invoices whose total or currency is wrong"),
            (self.garbled_events, "unparseable invoice.created log lines"),
        ]
        found = [f"{what}: {n}" for n, what in checks if n]
        if self.lateness.max_after_fault > self.bound:
            late = self.lateness.max_after_fault
            found.append(f"max lateness after the last fault {late:.1f} s > {self.bound:.0f} s")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures()

    def lines(self) -> list[str]:
        late = self.lateness
        return [
            f"accepted: {self.accepted}  committed: {self.committed}  invoiced: {self.invoiced}  "
            f"invoice.created effects: {self.effects} (+{len(self.unlogged_effects)} unlogged)",
            f"lost: {len(self.lost)}  doubled: {len(self.doubled)}",
            f"lateness (accepted -> invoiced, s): p50 {late.p50:.2f}  p99 {late.p99:.2f}  max {late.max:.2f}",
            f"after the last fault ({late.after_fault} orders): max {late.max_after_fault:.2f} s past "
            f"max(accepted, last fault) (bound {self.bound:.0f} s), max {late.max_plain_after_fault:.2f} s "
            "accepted -> invoiced",
            *(f"FAILED: {line}" for line in self.failures()),
        ]


def _wrong_amounts(evidence: Evidence, orders: Mapping[str, OrderRow]) -> frozenset[str]:
    """Invoices that disagree with their order, and orders that disagree with the body accepted for them."""
    wrong = set()
    for invoice in evidence.invoices:
        invoiced = orders.get(invoice.order_id)
        if invoiced is not None and (invoice.amount_total, invoice.currency, invoice.customer_id) != (
            invoiced.amount_total,
            invoiced.currency,
            invoiced.customer_id,
        ):
            wrong.add(invoiced.id)
    for a in evidence.accepted:
        placed = orders.get(a.order_id)
        expected = sum(int(line["quantity"]) * int(line["unit_amount"]) for line in a.body["lines"])
        if placed is not None and (placed.amount_total, placed.currency) != (expected, a.body["currency"]):
            wrong.add(placed.id)
    return frozenset(wrong)


def audit(evidence: Evidence, bound: float) -> Findings:
    """Check accepted ⊆ committed ⊆ invoiced, exactly once per request, body and effect, totals, lateness."""
    orders = {o.id: o for o in evidence.orders}
    invoices = {i.order_id: i for i in evidence.invoices}
    accepted_ids = {a.order_id for a in evidence.accepted}

    ids_per_key: dict[str, set[str]] = defaultdict(set)
    for a in evidence.accepted:
        ids_per_key[a.key].add(a.order_id)
    orders_per_body: dict[Fingerprint, list[str]] = defaultdict(list)
    for order in evidence.orders:
        orders_per_body[order.fingerprint].append(order.id)
    bodies: dict[Fingerprint, str] = {}  # body -> the first order id a 201 named for it
    for a in evidence.accepted:
        bodies.setdefault(fingerprint(a.body), a.order_id)

    events = evidence.invoice_events
    counted = set(invoices) | {o for o, n in events.items() if n}
    unlogged = {o for o in counted if o in invoices and events.get(o, 0) == 0 and invoices[o].deliveries > 1}
    effects_not_once = {
        o: events.get(o, 0) for o in counted - unlogged if events.get(o, 0) != 1 or o not in invoices
    }

    return Findings(
        accepted=len(accepted_ids),
        committed=len(orders),
        invoiced=len(invoices),
        effects=sum(events.values()),
        not_committed=frozenset(accepted_ids - set(orders)),
        not_invoiced=frozenset(set(orders) - set(invoices)),
        orphan_invoices=frozenset(set(invoices) - set(orders)),
        unaccepted_orders=frozenset(set(orders) - accepted_ids),
        keys_with_many_ids={k: frozenset(ids) for k, ids in ids_per_key.items() if len(ids) != 1},
        bodies_not_once={
            first_id: tuple(orders_per_body.get(fp, ()))
            for fp, first_id in bodies.items()
            if len(orders_per_body.get(fp, ())) != 1
        },
        effects_not_once=effects_not_once,
        unlogged_effects=frozenset(unlogged),
        wrong_amounts=_wrong_amounts(evidence, orders),
        garbled_events=evidence.garbled_events,
        lateness=lateness(evidence),
        bound=bound,
    )
