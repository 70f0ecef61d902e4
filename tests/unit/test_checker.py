"""The soak's checker can fail: fabricated evidence with one defect each, and the check that catches it."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.fault.checker import Accepted, Evidence, InvoiceRow, OrderRow, audit
from tests.fault.evidence import Snapshot, invoice_effects, read_logs

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BOUND = 120.0


def _body(n: int) -> dict[str, Any]:
    return {
        "customer_id": f"cus-{n}",
        "currency": "EUR",
        "lines": [{"sku": "SKU-1", "quantity": 2, "unit_amount": 100 * n}],
    }


def _order(n: int, body: dict[str, Any] | None = None, at: datetime = T0, after: float = 1.0) -> OrderRow:
    """Accepted at ``at`` and shown ``invoiced`` (number ``INV-<n>``) ``after`` seconds later."""
    body = body or _body(n)
    lines = tuple((line["sku"], line["quantity"], line["unit_amount"]) for line in body["lines"])
    total = sum(q * u for _, q, u in lines)
    return OrderRow(
        f"order-{n}",
        body["customer_id"],
        body["currency"],
        total,
        lines,
        at,
        status="invoiced",
        invoice_number=f"INV-{n:08d}",
        invoiced_at=at + timedelta(seconds=after),
    )


def _invoice(order: OrderRow, after: float = 0.5) -> InvoiceRow:
    """The order's invoice, committed (with its answer) ``after`` seconds after acceptance."""
    assert order.accepted_at is not None
    assert order.invoice_number is not None
    return InvoiceRow(
        order.id,
        order.customer_id,
        order.currency,
        order.amount_total,
        order.invoice_number,
        order.accepted_at + timedelta(seconds=after),
    )


def _placed(order: OrderRow) -> OrderRow:
    """The order as it is before the answer comes back."""
    return dataclasses.replace(order, status="placed", invoice_number=None, invoiced_at=None)


def healthy(count: int = 3) -> Evidence:
    """Every order accepted once, committed once, invoiced once with one effect, promptly."""
    orders = [_order(n) for n in range(1, count + 1)]
    return Evidence(
        accepted=[Accepted(f"key-{n}", f"order-{n}", _body(n)) for n in range(1, count + 1)],
        orders=orders,
        invoices=[_invoice(o) for o in orders],
        invoice_events={o.id: 1 for o in orders},
        last_fault_at=T0 - timedelta(seconds=5),
    )


def test_healthy_evidence_passes_every_check() -> None:
    findings = audit(healthy(), BOUND)

    assert findings.failures() == []
    assert (findings.accepted, findings.committed, findings.invoiced, findings.effects) == (3, 3, 3, 3)
    assert findings.marked_invoiced == 3
    assert findings.lateness.max == 1.0
    assert findings.invoice_lateness.max == 0.5


def test_an_accepted_order_missing_from_the_database_is_lost() -> None:
    evidence = healthy()
    evidence = dataclasses.replace(
        evidence, accepted=[*evidence.accepted, Accepted("key-9", "order-9", _body(9))]
    )

    findings = audit(evidence, BOUND)

    assert findings.not_committed == {"order-9"}
    assert findings.lost == {"order-9"}
    assert not findings.ok


def test_a_committed_order_without_invoice_is_lost() -> None:
    evidence = healthy()
    evidence = dataclasses.replace(
        evidence,
        orders=[_placed(evidence.orders[0]), *evidence.orders[1:]],
        invoices=evidence.invoices[1:],
        invoice_events={"order-2": 1, "order-3": 1},
    )

    findings = audit(evidence, BOUND)

    assert findings.not_invoiced == {"order-1"}
    assert findings.lost == {"order-1"}
    assert not findings.ok


def test_two_invoice_created_effects_for_one_order_are_doubled() -> None:
    evidence = dataclasses.replace(healthy(), invoice_events={"order-1": 2, "order-2": 1, "order-3": 1})

    findings = audit(evidence, BOUND)

    assert findings.effects_not_once == {"order-1": 2}
    assert findings.doubled == {"order-1"}
    assert not findings.ok


def test_an_invoice_without_its_effect_line_fails_the_effect_count() -> None:
    evidence = dataclasses.replace(healthy(), invoice_events={"order-2": 1, "order-3": 1})

    findings = audit(evidence, BOUND)

    assert findings.effects_not_once == {"order-1": 0}
    assert not findings.ok


def test_an_unlogged_effect_is_excused_only_when_its_message_was_delivered_again() -> None:
    """A worker SIGKILLed between COMMIT and its log line: the redelivery finds the message processed."""
    evidence = healthy()
    redelivered = dataclasses.replace(evidence.invoices[0], deliveries=2)
    evidence = dataclasses.replace(
        evidence, invoices=[redelivered, *evidence.invoices[1:]], invoice_events={"order-2": 1, "order-3": 1}
    )

    findings = audit(evidence, BOUND)

    assert findings.unlogged_effects == {"order-1"}
    assert findings.ok


def test_a_second_effect_line_is_never_excused_by_redeliveries() -> None:
    evidence = healthy()
    redelivered = dataclasses.replace(evidence.invoices[0], deliveries=2)
    evidence = dataclasses.replace(
        evidence,
        invoices=[redelivered, *evidence.invoices[1:]],
        invoice_events={"order-1": 2, "order-2": 1, "order-3": 1},
    )

    findings = audit(evidence, BOUND)

    assert findings.effects_not_once == {"order-1": 2}
    assert findings.doubled == {"order-1"}


def test_one_idempotency_key_answered_with_two_order_ids_is_doubled() -> None:
    evidence = healthy()
    second = _order(4, body=_body(1))
    evidence = dataclasses.replace(
        evidence,
        accepted=[*evidence.accepted, Accepted("key-1", second.id, _body(1))],
        orders=[*evidence.orders, second],
        invoices=[*evidence.invoices, _invoice(second)],
        invoice_events={**evidence.invoice_events, second.id: 1},
    )

    findings = audit(evidence, BOUND)

    assert findings.keys_with_many_ids == {"key-1": {"order-1", "order-4"}}
    assert {"order-1", "order-4"} <= findings.doubled
    assert not findings.ok


def test_a_body_that_made_two_orders_is_doubled_even_when_no_201_named_the_second() -> None:
    evidence = healthy()
    twin = _order(4, body=_body(2))  # committed, invoiced, but the client never heard of it
    evidence = dataclasses.replace(
        evidence,
        orders=[*evidence.orders, twin],
        invoices=[*evidence.invoices, _invoice(twin)],
        invoice_events={**evidence.invoice_events, twin.id: 1},
    )

    findings = audit(evidence, BOUND)

    assert findings.bodies_not_once == {"order-2": ("order-2", "order-4")}
    assert findings.unaccepted_orders == {"order-4"}
    assert findings.doubled == {"order-2", "order-4"}
    assert not findings.ok


def test_an_invoice_total_that_differs_from_its_order_fails() -> None:
    evidence = healthy()
    wrong = dataclasses.replace(evidence.invoices[0], amount_total=evidence.invoices[0].amount_total + 1)
    evidence = dataclasses.replace(evidence, invoices=[wrong, *evidence.invoices[1:]])

    findings = audit(evidence, BOUND)

    assert findings.wrong_amounts == {"order-1"}
    assert not findings.ok


def test_an_order_total_that_differs_from_the_accepted_body_fails() -> None:
    evidence = healthy()
    body = {**_body(1), "currency": "USD"}
    evidence = dataclasses.replace(
        evidence, accepted=[Accepted("key-1", "order-1", body), *evidence.accepted[1:]]
    )

    findings = audit(evidence, BOUND)

    assert "order-1" in findings.wrong_amounts
    assert not findings.ok


def test_an_order_invoiced_past_the_bound_after_the_last_fault_fails() -> None:
    evidence = healthy()
    late = _order(1, after=BOUND + 30)
    evidence = dataclasses.replace(evidence, orders=[late, *evidence.orders[1:]])

    findings = audit(evidence, BOUND)

    # Accepted 5 s after the last fault, so measured from acceptance: 150 s.
    assert findings.lateness.max_after_fault == BOUND + 30
    assert findings.lateness.max == BOUND + 30
    assert any("max lateness after the last fault" in f for f in findings.failures())


def test_lateness_after_a_fault_counts_from_the_fault_for_orders_accepted_before_it() -> None:
    evidence = healthy()
    fault = T0 + timedelta(seconds=100)
    late = _order(1, after=150.0)  # stuck through the fault: 50 s past it
    evidence = dataclasses.replace(evidence, orders=[late, *evidence.orders[1:]], last_fault_at=fault)

    findings = audit(evidence, BOUND)

    assert findings.lateness.after_fault == 1
    assert findings.lateness.max_after_fault == 50.0
    assert findings.lateness.max_plain_after_fault == 150.0
    assert findings.ok


def test_effects_are_counted_from_json_log_lines_and_garbled_ones_reported(tmp_path: Path) -> None:
    order_id = "7f1c2d4e-0000-4000-8000-000000000001"
    created = {"event": "invoice.created", "order_id": order_id, "message_id": "m", "level": "info"}
    (tmp_path / "worker-0.log").write_text(
        "celery banner\n" + json.dumps(created) + "\n" + '{"event": "invoice.created", "order_id": "7f1c\n'
    )
    (tmp_path / "worker-1.log").write_text(
        json.dumps(created)
        + "\n"
        + json.dumps({"event": "invoice.already_exists", "order_id": order_id})
        + "\n"
    )

    counts, garbled = invoice_effects(tmp_path)

    assert counts == {order_id: 2}
    assert garbled == 1  # a line cut short: an effect that cannot be attributed
    findings = audit(dataclasses.replace(healthy(), garbled_events=garbled), BOUND)
    assert findings.failures() == ["unparseable invoice.created log lines: 1"]


def test_an_invoice_whose_order_never_turns_invoiced_is_lost() -> None:
    """The invoice exists but its answer never came back: the order still says placed."""
    evidence = healthy()
    evidence = dataclasses.replace(evidence, orders=[_placed(evidence.orders[0]), *evidence.orders[1:]])

    findings = audit(evidence, BOUND)

    assert findings.not_marked_invoiced == {"order-1"}
    assert findings.lost == {"order-1"}
    assert findings.marked_invoiced == 2
    assert "invoiced but the order does not say invoiced: 1" in findings.failures()


def test_an_order_showing_another_invoice_number_fails() -> None:
    evidence = healthy()
    wrong = dataclasses.replace(evidence.orders[0], invoice_number="INV-99999999")
    evidence = dataclasses.replace(evidence, orders=[wrong, *evidence.orders[1:]])

    findings = audit(evidence, BOUND)

    assert findings.wrong_numbers == {"order-1"}
    assert "orders whose invoice_number is not their invoice's number: 1" in findings.failures()


def test_an_order_shown_invoiced_with_no_invoice_fails_and_is_lost() -> None:
    evidence = healthy()
    evidence = dataclasses.replace(
        evidence, invoices=evidence.invoices[1:], invoice_events={"order-2": 1, "order-3": 1}
    )

    findings = audit(evidence, BOUND)

    assert findings.wrong_numbers == {"order-1"}
    assert findings.lost == {"order-1"}


def test_an_invoice_committed_without_its_answer_fails() -> None:
    evidence = healthy()
    silent = dataclasses.replace(evidence.invoices[0], answered_at=None)
    evidence = dataclasses.replace(evidence, invoices=[silent, *evidence.invoices[1:]])

    findings = audit(evidence, BOUND)

    assert findings.unanswered_invoices == {"order-1"}
    assert not findings.ok


def test_an_answer_with_a_second_invoice_number_fails() -> None:
    evidence = dataclasses.replace(healthy(), events={"order.invoice_number_conflict": 1})

    findings = audit(evidence, BOUND)

    assert findings.failures() == ["answers with a second invoice number for an order: 1"]


def test_lateness_runs_to_the_order_turning_invoiced_not_to_the_invoice() -> None:
    """A prompt invoice whose answer comes back late is late: the bound is on the loop's end."""
    evidence = healthy()
    slow_answer = _order(1, after=BOUND + 10)
    evidence = dataclasses.replace(evidence, orders=[slow_answer, *evidence.orders[1:]])

    findings = audit(evidence, BOUND)

    assert findings.invoice_lateness.max == 0.5
    assert findings.lateness.max_after_fault == BOUND + 10
    assert not findings.ok


def test_redrives_and_duplicates_are_reported_not_failed() -> None:
    """Re-drives and absorbed duplicates are the machinery working: counted, never a failure."""
    evidence = dataclasses.replace(
        healthy(),
        redrives=7,
        redriven_messages=5,
        redeliveries=9,
        answers=8,
        events={
            "invoice.duplicate_message": 4,
            "invoice.reanswered": 5,
            "inbox.duplicate_message": 6,  # both consumers log it: 4 invoice side + 2 order side
            "order.invoice_recorded:already-invoiced": 3,
        },
    )

    findings = audit(evidence, BOUND)
    text = "\n".join(findings.lines())

    assert findings.ok
    assert "re-drives: 7 (5 order.placed messages re-driven)" in text
    assert "order.placed deliveries beyond the first: 9" in text
    assert "invoice side 4 duplicate messages + 0 already invoiced (5 answered again)" in text
    assert "order side 2 duplicate messages + 3 already invoiced" in text
    assert "invoice.created answers 8 for 3 invoices" in text


def test_logs_count_absorbed_duplicates_redrives_and_answer_outcomes(tmp_path: Path) -> None:
    order_id = "7f1c2d4e-0000-4000-8000-000000000001"
    lines = [
        {"event": "invoice.created", "order_id": order_id},
        {"event": "invoice.duplicate_message", "order_id": order_id},
        {"event": "order.invoice_recorded", "order_id": order_id, "outcome": "invoiced"},
        {"event": "order.invoice_recorded", "order_id": order_id, "outcome": "already-invoiced"},
        {"event": "outbox.redriven", "rows": 3},
        {"event": "order.invoice_number_conflict", "order_id": order_id},
    ]
    (tmp_path / "loop.log").write_text("".join(json.dumps(line) + "\n" for line in lines))

    tally = read_logs(tmp_path)

    assert tally.effects == {order_id: 1}
    assert tally.events == {
        "invoice.duplicate_message": 1,
        "order.invoice_recorded:invoiced": 1,
        "order.invoice_recorded:already-invoiced": 1,
        "outbox.redriven": 1,
        "order.invoice_number_conflict": 1,
    }


def _quiet(**changes: Any) -> Snapshot:
    base = Snapshot(
        orders=3,
        invoices=3,
        not_invoiced=0,
        pending_outbox=0,
        parked_outbox=0,
        unacknowledged=0,
        redrives=0,
        answers_unpublished=0,
        dead_letters=0,
        order_dead_letters=0,
        deliveries=3,
        queued=0,
        unacked=0,
    )
    return dataclasses.replace(base, **changes)


def test_the_loop_is_idle_only_when_every_order_is_invoiced_acknowledged_and_nothing_is_in_flight() -> None:
    assert _quiet().idle
    for busy in (
        {"not_invoiced": 1},  # an answer still on its way
        {"unacknowledged": 1},  # the relay would re-drive it
        {"answers_unpublished": 1},  # invoice.created not yet published
        {"pending_outbox": 1},
        {"queued": 1},
        {"unacked": 1},
        {"queued": None},  # the broker did not answer
    ):
        assert not _quiet(**busy).idle, busy


def test_an_unlogged_effect_is_excused_when_its_only_delivery_was_interrupted() -> None:
    """Killed between COMMIT and its log line, then the broker lost the redelivery: the answer,
    committed with the invoice, stops the re-drive, so the message is delivered only once."""
    evidence = healthy()
    killed = dataclasses.replace(evidence.invoices[0], message_id="m-1")
    evidence = dataclasses.replace(
        evidence,
        invoices=[killed, *evidence.invoices[1:]],
        invoice_events={"order-2": 1, "order-3": 1},
        interrupted=frozenset({"m-1"}),
    )

    findings = audit(evidence, BOUND)

    assert findings.unlogged_effects == {"order-1"}
    assert findings.ok
    other = dataclasses.replace(evidence, interrupted=frozenset({"m-2"}))  # another message's delivery
    assert audit(other, BOUND).effects_not_once == {"order-1": 0}


def test_a_delivery_received_and_never_finished_is_interrupted(tmp_path: Path) -> None:
    def task(message_id: str, what: str) -> str:
        return json.dumps({"event": f"Task invoices.order_placed[{message_id}] {what}"}) + "\n"

    done, killed, retried = (f"00000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3))
    (tmp_path / "worker-0.log").write_text(
        task(done, "received")
        + task(done, "succeeded in 0.1s: 'created'")
        + task(killed, "received")
        + task(retried, "received")
        + task(retried, "retry: Retry in 1s")
        + task(retried, "received")
        + task(retried, "succeeded in 0.1s: 'created'")
    )

    assert read_logs(tmp_path).interrupted == {killed}


def test_a_batch_received_and_never_settled_interrupts_each_of_its_messages(tmp_path: Path) -> None:
    def batch(event: str, *message_ids: str) -> str:
        line = {"event": event, "topic": "order.placed", "message_ids": list(message_ids)}
        return json.dumps(line) + "\n"

    first, second, third = (f"00000000-0000-4000-8000-00000000001{n}" for n in (1, 2, 3))
    (tmp_path / "worker-0.log").write_text(
        batch("inbox.batch_received", first, second)
        + batch("inbox.batch_settled", first, second)
        + batch("inbox.batch_received", third, second)  # killed after its commit: no settled line
    )

    assert read_logs(tmp_path).interrupted == {third, second}
