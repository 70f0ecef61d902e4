"""The Jepsen-style checker: what the client was told, what both databases hold, what the workers did.

The loop is closed (issue 10): an order counts as done when the order service says ``invoiced``
with the invoice's own number, not when the invoice exists. Times come from the database's clock:
accepted is the ``order.placed`` outbox row's ``created_at`` (``now()`` in the API's transaction),
invoiced is when a read first saw the order ``invoiced`` (``now()`` of that read), and the invoice
leg is the ``invoice.created`` outbox row's ``created_at`` (``now()`` in the invoice's transaction).

``audit`` is a pure function from ``Evidence`` to ``Findings``, so a unit test can show that every
check can fail (tests/unit/test_checker.py). ``Checker`` gathers that evidence from a running
cluster (``tests.fault.evidence.Checker``) and waits for quiescence before a verdict is read.

Constraints hide what they prevent: ``UNIQUE(order_id)`` on invoices makes "two invoices for one
order" unobservable in the invoices table. So "doubled" is counted where no constraint filters:
order ids per Idempotency-Key, orders per accepted body, and ``invoice.created`` log lines (one per
committed invoice transaction) per order.

A log line is written after its COMMIT, so a worker SIGKILLed in between leaves an invoice with no
line. That is excused only when the invoice's message was delivered again afterwards (the killed
delivery was never acknowledged) or when Celery's own lines show a delivery of it that started and
never ended (its worker died holding it; a broker loss may then have dropped the redelivery, and
the answer committed with the invoice stops the re-drive); a line too many is never excused.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    "order_duplicates",
]

INVOICED = "invoiced"
"""``orders.status`` once the answer came back (``order_service.models.INVOICED``)."""

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
    accepted_at: datetime | None
    """Its ``order.placed`` outbox row's ``created_at``: the database clock in the accepting transaction."""
    status: str = "placed"
    invoice_number: str | None = None
    invoiced_at: datetime | None = None
    """The database clock when a read first saw it ``invoiced`` (``tests.fault.evidence.InvoicedWatch``)."""

    @property
    def fingerprint(self) -> Fingerprint:
        return (self.customer_id, self.currency, self.lines)


@dataclass(frozen=True)
class InvoiceRow:
    order_id: str
    customer_id: str
    currency: str
    amount_total: int
    number: str
    answered_at: datetime | None
    """Its first ``invoice.created`` outbox row's ``created_at``: the database clock in the invoice's
    transaction (``None``: the invoice was committed without its answer)."""
    deliveries: int = 1
    """How often the message that made this invoice was delivered (``message_deliveries``)."""
    message_id: str = ""
    """The ``order.placed`` message that made it."""


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
    redrives: int = 0
    """``sum(outbox.redrives)`` over ``order.placed``: republished because no answer came."""
    redriven_messages: int = 0
    redeliveries: int = 0
    """``order.placed`` deliveries beyond the first per message (broker restores and re-drives)."""
    answers: int = 0
    """``invoice.created`` rows in the invoices outbox (one per invoice, plus one per answer sent again)."""
    events: Mapping[str, int] = field(default_factory=dict)
    """Log event -> lines (``tests.fault.evidence.COUNTED_EVENTS``)."""
    interrupted: frozenset[str] = frozenset()
    """``order.placed`` message ids with a delivery the logs show started and never ended."""


@dataclass(frozen=True)
class Lateness:
    """Seconds from acceptance to done, for every order done (both times on the database clock).

    ``max_after_fault`` is over the orders done after the last fault, counted from the later of
    their acceptance and the last fault: "every accepted order is invoiced within N s of the last
    fault". ``max_plain_after_fault`` is plain acceptance -> done over the same orders.
    """

    count: int = 0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    after_fault: int = 0
    max_after_fault: float = 0.0
    max_plain_after_fault: float = 0.0

    def summary(self) -> str:
        return f"p50 {self.p50:.2f}  p99 {self.p99:.2f}  max {self.max:.2f}"


def order_duplicates(events: Mapping[str, int]) -> int:
    """Duplicate ``invoice.created`` messages the order consumer's inbox absorbed.

    Both consumers log the library's ``inbox.duplicate_message``; the invoice worker's handler adds its
    own ``invoice.duplicate_message`` to each of its duplicates, so the order side's are the rest.
    """
    return max(0, events.get("inbox.duplicate_message", 0) - events.get("invoice.duplicate_message", 0))


def _percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` of the values at or below it."""
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)] if ordered else 0.0


def lateness(spans: Iterable[tuple[datetime, datetime]], fault: datetime | None) -> Lateness:
    """``spans``: (accepted, done) per order."""
    plain, after, plain_after = [], [], []
    for accepted, done in spans:
        seconds = (done - accepted).total_seconds()
        plain.append(seconds)
        if fault is None or done > fault:
            since = accepted if fault is None else max(accepted, fault)
            after.append((done - since).total_seconds())
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


def _spans(evidence: Evidence) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """(accepted, order seen invoiced) and (accepted, invoice committed) per order that has both."""
    accepted = {o.id: o.accepted_at for o in evidence.orders if o.accepted_at is not None}
    invoiced = [
        (accepted[o.id], o.invoiced_at) for o in evidence.orders if o.id in accepted and o.invoiced_at
    ]
    answered = [
        (accepted[i.order_id], i.answered_at)
        for i in evidence.invoices
        if i.order_id in accepted and i.answered_at is not None
    ]
    return invoiced, answered


@dataclass(frozen=True)
class Findings:
    """The verdict: each field is one check's counterexamples (empty when the check passed)."""

    accepted: int
    committed: int
    invoiced: int
    marked_invoiced: int
    effects: int
    not_committed: frozenset[str]
    not_invoiced: frozenset[str]
    not_marked_invoiced: frozenset[str]
    """Invoiced orders the order service does not show ``invoiced``: the answer never came back."""
    orphan_invoices: frozenset[str]
    unaccepted_orders: frozenset[str]
    keys_with_many_ids: Mapping[str, frozenset[str]]
    bodies_not_once: Mapping[str, tuple[str, ...]]
    """First order id a 201 named for the body -> the orders in the database that match the body."""
    effects_not_once: Mapping[str, int]
    unlogged_effects: frozenset[str]
    """Invoiced orders with no line, whose message was delivered again or whose delivery the logs show
    started and never ended: a worker SIGKILLed between COMMIT and its log line."""
    wrong_amounts: frozenset[str]
    wrong_numbers: frozenset[str]
    """Orders whose ``invoice_number`` is not their invoice's (or that say invoiced with no invoice)."""
    unanswered_invoices: frozenset[str]
    """Invoices committed with no ``invoice.created`` row in the invoices outbox."""
    number_conflicts: int
    """``order.invoice_number_conflict`` lines: an order was answered with two invoice numbers."""
    garbled_events: int
    lateness: Lateness
    """Accepted -> the order service shows it ``invoiced`` (the loop's end): the bound applies here."""
    invoice_lateness: Lateness
    """Accepted -> its invoice committed (the first leg), for comparison."""
    bound: float
    redrives: int = 0
    redriven_messages: int = 0
    redeliveries: int = 0
    answers: int = 0
    events: Mapping[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> frozenset[str]:
        """Accepted but never committed, committed and never invoiced, or invoiced and never told."""
        return self.not_committed | self.not_invoiced | self.not_marked_invoiced

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
            (len(self.not_marked_invoiced), "invoiced but the order does not say invoiced"),
            (len(self.orphan_invoices), "invoices for no committed order"),
            (len(self.unaccepted_orders), "committed orders no 201 named"),
            (len(self.keys_with_many_ids), "Idempotency-Keys answered with more than one order id"),
            (len(self.bodies_not_once), "accepted bodies not matching exactly one order"),
            (len(self.effects_not_once), "orders without exactly one invoice.created effect"),
            (len(self.wrong_amounts), "orders or invoices whose total or currency is wrong"),
            (len(self.wrong_numbers), "orders whose invoice_number is not their invoice's number"),
            (len(self.unanswered_invoices), "invoices committed without an invoice.created answer"),
            (self.number_conflicts, "answers with a second invoice number for an order"),
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
        late, events = self.lateness, self.events
        recorded = {
            k.split(":", 1)[1]: n for k, n in events.items() if k.startswith("order.invoice_recorded:")
        }
        return [
            f"accepted: {self.accepted}  committed: {self.committed}  invoiced: {self.invoiced}  "
            f"orders invoiced: {self.marked_invoiced}  "
            f"invoice.created effects: {self.effects} (+{len(self.unlogged_effects)} unlogged)",
            f"lost: {len(self.lost)}  doubled: {len(self.doubled)}",
            f"re-drives: {self.redrives} ({self.redriven_messages} order.placed messages re-driven); "
            f"order.placed deliveries beyond the first: {self.redeliveries}",
            f"duplicates absorbed: invoice side {events.get('invoice.duplicate_message', 0)} duplicate "
            f"messages + {events.get('invoice.already_exists', 0)} already invoiced "
            f"({events.get('invoice.reanswered', 0)} answered again); order side "
            f"{order_duplicates(events)} duplicate messages + "
            f"{recorded.get('already-invoiced', 0)} already invoiced; "
            f"invoice.created answers {self.answers} for {self.invoiced} invoices",
            f"lateness (accepted -> order invoiced, database clock, s): {late.summary()}",
            f"  accepted -> invoice committed (s): {self.invoice_lateness.summary()}",
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


def _wrong_numbers(orders: Mapping[str, OrderRow], invoices: Mapping[str, InvoiceRow]) -> frozenset[str]:
    """Orders that say ``invoiced`` with a number that is not their invoice's (or with no invoice)."""
    wrong = set()
    for order in orders.values():
        if order.status != INVOICED:
            continue
        invoice = invoices.get(order.id)
        if invoice is None or order.invoice_number != invoice.number:
            wrong.add(order.id)
    return frozenset(wrong)


def audit(evidence: Evidence, bound: float) -> Findings:
    """Check accepted ⊆ committed ⊆ invoiced ⊆ shown invoiced, exactly once per request, body and
    effect, totals and numbers, lateness."""
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
    unlogged = {
        o
        for o in counted
        if o in invoices
        and events.get(o, 0) == 0
        and (invoices[o].deliveries > 1 or invoices[o].message_id in evidence.interrupted)
    }
    effects_not_once = {
        o: events.get(o, 0) for o in counted - unlogged if events.get(o, 0) != 1 or o not in invoices
    }
    invoiced_spans, answered_spans = _spans(evidence)

    return Findings(
        accepted=len(accepted_ids),
        committed=len(orders),
        invoiced=len(invoices),
        marked_invoiced=sum(o.status == INVOICED for o in orders.values()),
        effects=sum(events.values()),
        not_committed=frozenset(accepted_ids - set(orders)),
        not_invoiced=frozenset(set(orders) - set(invoices)),
        not_marked_invoiced=frozenset(o for o in set(orders) & set(invoices) if orders[o].status != INVOICED),
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
        wrong_numbers=_wrong_numbers(orders, invoices),
        unanswered_invoices=frozenset(i.order_id for i in evidence.invoices if i.answered_at is None),
        number_conflicts=evidence.events.get("order.invoice_number_conflict", 0),
        garbled_events=evidence.garbled_events,
        lateness=lateness(invoiced_spans, evidence.last_fault_at),
        invoice_lateness=lateness(answered_spans, evidence.last_fault_at),
        bound=bound,
        redrives=evidence.redrives,
        redriven_messages=evidence.redriven_messages,
        redeliveries=evidence.redeliveries,
        answers=evidence.answers,
        events=dict(evidence.events),
    )
