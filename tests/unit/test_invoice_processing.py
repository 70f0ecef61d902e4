"""The worker's delivery logic, called directly: retries, dead letters and replay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask_outbox.db import utcnow
from sqlalchemy import func, select
from sqlalchemy.exc import (
    DatabaseError,
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)

import invoice_worker.processing as processing
from invoice_worker.database import InvoiceDatabase
from invoice_worker.dead_letters import confirmed_message_ids, pending_ids, replay
from invoice_worker.models import Base, DeadLetter, Invoice
from invoice_worker.processing import DeliveryPolicy, RetryLater, handle_order_placed
from shared.config import Settings


@pytest.fixture
def invoice_db(sqlite_settings: Settings) -> Iterator[InvoiceDatabase]:
    sqlite_settings.ensure_var_dir()
    database = InvoiceDatabase(sqlite_settings)
    Base.metadata.create_all(database.engine)
    yield database
    database.engine.dispose()


POLICY = DeliveryPolicy(max_retries=2, max_deliveries=3, backoff_base=0.01, backoff_max=0.05)


def payload(**changes: Any) -> dict[str, Any]:
    body = {
        "schema_version": 1,
        "order_id": str(uuid.uuid4()),
        "customer_id": "cus_1",
        "currency": "EUR",
        "lines": [{"sku": "BOOK-1", "quantity": 2, "unit_amount": 1250, "amount_total": 2500}],
        "amount_total": 2500,
        "placed_at": "2026-11-24T18:00:00+00:00",
    }
    return body | changes


def count(database: InvoiceDatabase, model: type[Any]) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def letters(database: InvoiceDatabase) -> list[DeadLetter]:
    with database.session() as session:
        return list(session.scalars(select(DeadLetter)))


def test_redelivered_message_makes_one_invoice(invoice_db: InvoiceDatabase) -> None:
    message_id, body = uuid.uuid4(), payload()
    outcomes = [handle_order_placed(invoice_db, message_id, body, 0, POLICY) for _ in range(3)]
    assert outcomes == ["created", "duplicate-message", "duplicate-message"]
    assert count(invoice_db, Invoice) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (payload(schema_version=2), "UnsupportedSchemaVersion"),
        (payload(amount_total=1), "ValidationError"),
        (["not", "an", "object"], "InvalidPayload"),
    ],
)
def test_poison_payload_is_dead_lettered_at_once(invoice_db: InvoiceDatabase, body: Any, reason: str) -> None:
    assert handle_order_placed(invoice_db, uuid.uuid4(), body, 0, POLICY) == "dead-lettered"
    [letter] = letters(invoice_db)
    assert letter.reason.startswith(reason)
    assert letter.attempts == 1
    assert count(invoice_db, Invoice) == 0


def test_message_that_always_raises_is_retried_then_parked(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: Any) -> None:
        raise RuntimeError("bug in invoicing")

    monkeypatch.setattr(processing, "create_invoice", explode)
    message_id, body = uuid.uuid4(), payload()
    for retries in range(POLICY.max_deliveries - 1):
        with pytest.raises(RetryLater):
            handle_order_placed(invoice_db, message_id, body, retries, POLICY)
    assert handle_order_placed(invoice_db, message_id, body, 2, POLICY) == "dead-lettered"
    [letter] = letters(invoice_db)
    assert (letter.attempts, letter.reason) == (3, "RuntimeError: bug in invoicing")


def test_message_whose_deliveries_never_complete_is_parked_without_running(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id, body = uuid.uuid4(), payload()
    monkeypatch.setattr(processing, "invoice_payload", lambda *_: pytest.fail("ran a parked message"))
    for _ in range(POLICY.max_deliveries):  # each of these "crashed" before the invoice committed
        with invoice_db.session() as session:
            processing.count_delivery(session, message_id)
    assert handle_order_placed(invoice_db, message_id, body, 0, POLICY) == "dead-lettered"
    assert letters(invoice_db)[0].attempts == POLICY.max_deliveries + 1


def test_database_outage_retries_with_growing_backoff_then_parks(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_: Any) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(processing, "count_delivery", unreachable)
    countdowns = []
    for retries in range(POLICY.max_retries):
        with pytest.raises(RetryLater) as retry:
            handle_order_placed(invoice_db, uuid.uuid4(), payload(), retries, POLICY)
        countdowns.append(retry.value.countdown)
    assert countdowns[0] <= 0.01 < countdowns[1] * 2
    assert handle_order_placed(invoice_db, uuid.uuid4(), payload(), 2, POLICY) == "dead-lettered"
    assert "invoice database trouble" in letters(invoice_db)[0].reason


def test_replay_after_fix_makes_one_invoice_and_replaying_again_does_not_double(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id, body = uuid.uuid4(), payload()
    with monkeypatch.context() as patched:
        patched.setattr(processing, "create_invoice", lambda *_: (_ for _ in ()).throw(RuntimeError("bug")))
        handle_order_placed(invoice_db, message_id, body, 0, DeliveryPolicy(max_deliveries=1))
    [letter_id] = pending_ids(invoice_db)

    first, second = replay(invoice_db, letter_id), replay(invoice_db, letter_id)

    assert (first.succeeded, first.outcome) == (True, "created")
    assert (second.succeeded, second.outcome) == (True, "duplicate-message")
    assert count(invoice_db, Invoice) == 1
    assert pending_ids(invoice_db) == []
    assert list(confirmed_message_ids(invoice_db, utcnow().replace(year=2000))) == [message_id]


def test_replay_that_fails_again_stays_pending_with_one_more_attempt(invoice_db: InvoiceDatabase) -> None:
    handle_order_placed(invoice_db, uuid.uuid4(), payload(schema_version=9), 0, POLICY)
    [letter_id] = pending_ids(invoice_db)
    assert not replay(invoice_db, letter_id).succeeded
    assert pending_ids(invoice_db) == [letter_id]
    assert letters(invoice_db)[0].attempts == 2


DATABASE_ERROR_FAMILIES = [
    OperationalError,
    InterfaceError,
    InternalError,  # a read-only transaction (failover onto a replica), an idle-in-transaction timeout
    ProgrammingError,  # e.g. a table missing while a migration runs
    DataError,
    NotSupportedError,
    DatabaseError,
    IntegrityError,  # not the uniqueness that create_invoice settles with ON CONFLICT
]


def database_error(family: type[DBAPIError]) -> DBAPIError:
    return family("INSERT INTO message_deliveries ...", {}, Exception(f"{family.__name__} from the driver"))


def failing(family: type[DBAPIError]) -> Any:
    def fail(*_: Any) -> None:
        raise database_error(family)

    return fail


@pytest.mark.parametrize("step", ["count_delivery", "create_invoice"])
@pytest.mark.parametrize("family", DATABASE_ERROR_FAMILIES, ids=lambda f: f.__name__)
def test_every_database_error_is_retried_never_a_silent_success(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError], step: str
) -> None:
    monkeypatch.setattr(processing, step, failing(family))
    for retries in range(POLICY.max_retries):
        with pytest.raises(RetryLater) as retry:
            handle_order_placed(invoice_db, uuid.uuid4(), payload(), retries, POLICY)
        assert retry.value.reason.startswith("invoice database trouble")
        assert family.__name__ in retry.value.reason
    assert (count(invoice_db, Invoice), letters(invoice_db)) == (0, [])


@pytest.mark.parametrize("family", DATABASE_ERROR_FAMILIES, ids=lambda f: f.__name__)
def test_database_error_past_the_retry_bound_is_dead_lettered_when_the_database_takes_it(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError]
) -> None:
    monkeypatch.setattr(processing, "create_invoice", failing(family))
    message_id = uuid.uuid4()
    outcome = handle_order_placed(invoice_db, message_id, payload(), POLICY.max_retries, POLICY)
    assert outcome == "dead-lettered"
    [letter] = letters(invoice_db)
    assert (letter.message_id, letter.attempts) == (message_id, POLICY.max_retries + 1)
    assert family.__name__ in letter.reason


@pytest.mark.parametrize("family", DATABASE_ERROR_FAMILIES, ids=lambda f: f.__name__)
def test_read_only_database_past_the_retry_bound_keeps_the_message_at_the_longest_backoff(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError]
) -> None:
    """The dead letter cannot be written either: the message stays in the broker, never dropped."""
    monkeypatch.setattr(processing, "count_delivery", failing(family))
    monkeypatch.setattr(processing, "record_dead_letter", failing(InternalError))
    for retries in (POLICY.max_retries, POLICY.max_retries + 50):
        with pytest.raises(RetryLater) as retry:
            handle_order_placed(invoice_db, uuid.uuid4(), payload(), retries, POLICY)
        assert retry.value.countdown == POLICY.backoff_max


def test_poison_message_while_the_database_is_read_only_is_retried_not_dropped(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parking needs a write too: a dead letter that cannot be written is no reason to acknowledge."""
    monkeypatch.setattr(processing, "record_dead_letter", failing(InternalError))
    with pytest.raises(RetryLater):
        handle_order_placed(invoice_db, uuid.uuid4(), payload(schema_version=2), 0, POLICY)


def test_message_is_invoiced_once_the_database_is_writable_again(
    invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id, body = uuid.uuid4(), payload()
    with monkeypatch.context() as read_only:
        read_only.setattr(processing, "count_delivery", failing(InternalError))
        read_only.setattr(processing, "record_dead_letter", failing(InternalError))
        for retries in range(POLICY.max_retries + 3):
            with pytest.raises(RetryLater):
                handle_order_placed(invoice_db, message_id, body, retries, POLICY)
    assert handle_order_placed(invoice_db, message_id, body, POLICY.max_retries + 3, POLICY) == "created"
    assert (count(invoice_db, Invoice), letters(invoice_db)) == (1, [])


@pytest.mark.parametrize(
    ("backoff_max", "visibility_timeout", "cap"),
    [(20.0, 60, 20.0), (20.0, 10, 5.0), (1.5, 4, 1.5)],
)
def test_retry_countdown_stays_below_the_visibility_timeout(
    backoff_max: float, visibility_timeout: int, cap: float
) -> None:
    """A countdown retry waits unacked in a worker; past the timeout Redis would restore a second copy."""
    settings = Settings(worker_retry_backoff_max=backoff_max, broker_visibility_timeout=visibility_timeout)
    policy = DeliveryPolicy.from_settings(settings)
    assert policy.backoff_max == cap
    assert max(policy.backoff(attempt) for attempt in range(1, 200)) <= cap
