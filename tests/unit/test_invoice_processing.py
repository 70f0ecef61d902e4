"""The library's consumer, called directly through both services' handlers: retries, dead letters, replay.

``Consumer.deliver`` is what the Celery task runs. Each rule is checked on the invoice worker
(``order.placed``) and on the order consumer (``invoice.created``), which now follow the same rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from flask_outbox import DEAD_LETTERED, DUPLICATE, DeliveryPolicy, InboxTables, InboxWorker
from flask_outbox.consumer import Consumer, RetryLater
from flask_outbox.dead_letters import pending_ids, replay
from sqlalchemy import Table, func, select
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

from invoice_worker.models import Invoice
from order_service.models import INVOICED, Order
from shared.config import Settings
from tests.unit.test_order_consumer import answer, place

INVOICE_POLICY = DeliveryPolicy(max_retries=2, max_deliveries=3, backoff_base=0.01, backoff_max=0.05)
"""The policy the ``invoice_worker``/``order_worker`` fixtures build from ``conftest.WORKER_POLICY``."""


def payload(**changes: Any) -> dict[str, Any]:
    """An ``order.placed`` payload."""
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


def count(worker: InboxWorker, table: Any, *where: Any) -> int:
    with worker.database.session() as session:
        return session.scalar(select(func.count()).select_from(table).where(*where)) or 0


@dataclass
class Service:
    """One consuming service under test: its worker, a fresh valid message, and what applying one writes."""

    name: str
    worker: InboxWorker
    message: Callable[[], dict[str, Any]]
    effect: tuple[Any, ...]
    """The table the effect lands in, and its condition: an invoice, or an invoiced order."""
    applied: str

    @property
    def consumer(self) -> Consumer[Any]:
        [consumer] = self.worker.consumers.values()
        return consumer

    @property
    def inbox(self) -> InboxTables:
        return self.worker.inbox

    def effects(self) -> int:
        return count(self.worker, *self.effect)

    def letters(self) -> list[Any]:
        letters: Table = self.inbox.dead_letters
        with self.worker.database.session() as session:
            return list(session.execute(select(letters).order_by(letters.c.id)))

    def processed(self) -> int:
        return count(self.worker, self.inbox.processed)

    def broken(self, monkeypatch: pytest.MonkeyPatch, apply: Callable[..., Any]) -> Consumer[Any]:
        """The registered consumer with its handler's ``apply`` replaced (a bug, or database trouble)."""
        consumer = self.consumer
        monkeypatch.setattr(consumer, "handler", replace(consumer.handler, apply=apply, apply_batch=None))
        return consumer


@pytest.fixture(params=["invoice", "order"])
def service(request: pytest.FixtureRequest) -> Service:
    if request.param == "invoice":
        worker = request.getfixturevalue("invoice_worker")
        return Service("invoice", worker, payload, (Invoice,), "created")
    worker = request.getfixturevalue("order_worker")
    client = request.getfixturevalue("client")

    def message() -> dict[str, Any]:
        return answer(*place(client), "INV-00000001")

    return Service("order", worker, message, (Order, Order.status == INVOICED), "invoiced")


def test_the_fixtures_consume_with_the_small_policy(service: Service) -> None:
    assert service.consumer.policy == INVOICE_POLICY


def test_redelivered_message_makes_one_effect(service: Service) -> None:
    message_id, body = uuid.uuid4(), service.message()
    outcomes = [service.consumer.deliver(message_id, body, 0) for _ in range(3)]
    assert outcomes == [service.applied, DUPLICATE, DUPLICATE]
    assert (service.effects(), service.processed()) == (1, 1)


POISON = [
    ("invoice", payload(schema_version=2), "UnsupportedSchemaVersion"),
    ("invoice", payload(amount_total=1), "ValidationError"),
    ("invoice", ["not", "an", "object"], "InvalidMessage"),
    ("order", ["not", "an", "object"], "InvalidMessage"),
    ("order", {"schema_version": 2, "order_id": "x"}, "UnsupportedSchemaVersion"),
    ("order", {"schema_version": 1, "order_id": "x"}, "ValidationError"),
]


@pytest.mark.parametrize(("service", "body", "reason"), POISON, indirect=["service"])
def test_poison_payload_is_dead_lettered_at_once(service: Service, body: Any, reason: str) -> None:
    message_id = uuid.uuid4()
    assert service.consumer.deliver(message_id, body, 0) == DEAD_LETTERED
    [letter] = service.letters()
    assert (letter.message_id, letter.payload) == (message_id, body)
    assert letter.reason.startswith(reason)
    assert letter.attempts == 1
    assert letter.task_name == service.consumer.task_name
    assert (service.effects(), service.processed()) == (0, 0)


def test_message_that_always_raises_is_retried_then_parked(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: Any) -> str:
        raise RuntimeError(f"bug in {service.name}")

    consumer = service.broken(monkeypatch, explode)
    message_id, body = uuid.uuid4(), service.message()
    for retries in range(INVOICE_POLICY.max_deliveries - 1):
        with pytest.raises(RetryLater):
            consumer.deliver(message_id, body, retries)
    assert consumer.deliver(message_id, body, 2) == DEAD_LETTERED
    [letter] = service.letters()
    assert (letter.attempts, letter.reason) == (3, f"RuntimeError: bug in {service.name}")
    assert (service.effects(), service.processed()) == (0, 0)


def test_message_whose_deliveries_never_complete_is_parked_without_running(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = service.consumer
    message_id, body = uuid.uuid4(), service.message()
    monkeypatch.setattr(consumer, "apply", lambda *_: pytest.fail("ran a parked message"))
    for _ in range(INVOICE_POLICY.max_deliveries):  # each of these "crashed" before the effect committed
        with service.worker.database.session() as session:
            service.inbox.count_delivery(session, message_id)
    assert consumer.deliver(message_id, body, 0) == DEAD_LETTERED
    [letter] = service.letters()
    assert letter.attempts == INVOICE_POLICY.max_deliveries + 1
    assert letter.reason.startswith("delivered 4 times without completing")


def test_database_outage_retries_with_growing_backoff_then_parks(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_: Any, **__: Any) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(InboxTables, "count_delivery", unreachable)
    consumer, body = service.consumer, service.message()
    countdowns = []
    for retries in range(INVOICE_POLICY.max_retries):
        with pytest.raises(RetryLater) as retry:
            consumer.deliver(uuid.uuid4(), body, retries)
        countdowns.append(retry.value.countdown)
    assert countdowns[0] <= 0.01 < countdowns[1] * 2
    assert consumer.deliver(uuid.uuid4(), body, 2) == DEAD_LETTERED
    [letter] = service.letters()
    assert letter.reason == "database trouble: OperationalError: connection refused"
    assert service.effects() == 0


def test_replay_after_fix_applies_once_and_replaying_again_does_not_double(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id, body = uuid.uuid4(), service.message()
    consumer = service.consumer
    with monkeypatch.context() as patched:
        patched.setattr(consumer, "policy", replace(consumer.policy, max_deliveries=1))
        patched.setattr(
            consumer,
            "handler",
            replace(consumer.handler, apply=lambda *_: (_ for _ in ()).throw(RuntimeError())),
        )
        assert consumer.deliver(message_id, body, 0) == DEAD_LETTERED
    [letter_id] = pending_ids(service.worker)

    first, second = replay(service.worker, letter_id), replay(service.worker, letter_id)

    assert (first.succeeded, first.outcome) == (True, service.applied)
    assert (second.succeeded, second.outcome) == (True, DUPLICATE)
    assert service.effects() == 1
    assert pending_ids(service.worker) == []
    # Settled: processed (the inbox holds it) and its dead letter marked replayed.
    assert (
        count(service.worker, service.inbox.processed, service.inbox.processed.c.message_id == message_id)
        == 1
    )
    [letter] = service.letters()
    assert (letter.message_id, letter.replayed_at is not None) == (message_id, True)


@pytest.mark.parametrize(
    ("service", "body"),
    [("invoice", payload(schema_version=9)), ("order", {"schema_version": 9})],
    indirect=["service"],
)
def test_replay_that_fails_again_stays_pending_with_one_more_attempt(service: Service, body: Any) -> None:
    service.consumer.deliver(uuid.uuid4(), body, 0)
    [letter_id] = pending_ids(service.worker)
    assert not replay(service.worker, letter_id).succeeded
    assert pending_ids(service.worker) == [letter_id]
    assert service.letters()[0].attempts == 2


def test_a_redelivery_of_a_parked_message_that_now_applies_settles_its_dead_letter(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parked too early (e.g. redelivered while a slow delivery still ran): applying it settles the letter."""
    message_id, body = uuid.uuid4(), service.message()
    with monkeypatch.context() as patched:
        patched.setattr(service.consumer, "policy", replace(INVOICE_POLICY, max_deliveries=1))
        patched.setattr(
            service.consumer,
            "handler",
            replace(service.consumer.handler, apply=lambda *_: (_ for _ in ()).throw(RuntimeError())),
        )
        service.consumer.deliver(message_id, body, 0)
    assert pending_ids(service.worker) != []
    assert service.consumer.apply(message_id, body) == service.applied
    assert pending_ids(service.worker) == []


DATABASE_ERROR_FAMILIES = [
    OperationalError,
    InterfaceError,
    InternalError,  # a read-only transaction (failover onto a replica), an idle-in-transaction timeout
    ProgrammingError,  # e.g. a table missing while a migration runs
    DataError,
    NotSupportedError,
    DatabaseError,
    IntegrityError,  # not the uniqueness the handlers settle with ON CONFLICT / guarded UPDATEs
]


def database_error(family: type[DBAPIError]) -> DBAPIError:
    return family("INSERT INTO message_deliveries ...", {}, Exception(f"{family.__name__} from the driver"))


def failing(family: type[DBAPIError]) -> Any:
    def fail(*_: Any, **__: Any) -> None:
        raise database_error(family)

    return fail


def _fail_at(
    step: str, service: Service, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError]
) -> Consumer[Any]:
    """Database trouble at ``step``: counting the delivery (the inbox) or applying it (the handler)."""
    if step == "count_delivery":
        monkeypatch.setattr(InboxTables, "count_delivery", failing(family))
        return service.consumer
    return service.broken(monkeypatch, failing(family))


@pytest.mark.parametrize("step", ["count_delivery", "apply"])
@pytest.mark.parametrize("family", DATABASE_ERROR_FAMILIES, ids=lambda f: f.__name__)
def test_every_database_error_is_retried_never_a_silent_success(
    service: Service, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError], step: str
) -> None:
    consumer = _fail_at(step, service, monkeypatch, family)
    body = service.message()
    for retries in range(INVOICE_POLICY.max_retries):
        with pytest.raises(RetryLater) as retry:
            consumer.deliver(uuid.uuid4(), body, retries)
        assert retry.value.reason.startswith("database trouble")
        assert family.__name__ in retry.value.reason
    assert (service.effects(), service.processed(), service.letters()) == (0, 0, [])


@pytest.mark.parametrize("family", DATABASE_ERROR_FAMILIES, ids=lambda f: f.__name__)
def test_database_error_past_the_retry_bound_is_dead_lettered_when_the_database_takes_it(
    service: Service, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError]
) -> None:
    consumer = _fail_at("apply", service, monkeypatch, family)
    message_id, body = uuid.uuid4(), service.message()
    with pytest.raises(RetryLater):
        consumer.deliver(message_id, body, INVOICE_POLICY.max_retries - 1)
    assert consumer.deliver(message_id, body, INVOICE_POLICY.max_retries) == DEAD_LETTERED
    [letter] = service.letters()
    assert (letter.message_id, letter.attempts) == (message_id, INVOICE_POLICY.max_retries + 1)
    assert family.__name__ in letter.reason


class _BrokenDatabase:
    """A database whose every session fails the way a database in trouble does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def session(self) -> Any:
        raise self.error


@pytest.mark.parametrize("family", DATABASE_ERROR_FAMILIES, ids=lambda f: f.__name__)
def test_read_only_database_past_the_retry_bound_keeps_the_message_at_the_longest_backoff(
    service: Service, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError]
) -> None:
    """The dead letter cannot be written either: the message stays in the broker, never dropped."""
    monkeypatch.setattr(InboxTables, "count_delivery", failing(family))
    monkeypatch.setattr(InboxTables, "park", failing(InternalError))
    consumer, body = service.consumer, service.message()
    for retries in (INVOICE_POLICY.max_retries, INVOICE_POLICY.max_retries + 50):
        with pytest.raises(RetryLater) as retry:
            consumer.deliver(uuid.uuid4(), body, retries)
        assert retry.value.countdown == INVOICE_POLICY.backoff_max


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, Exception("connection refused")),
        InternalError("UPDATE", {}, Exception("cannot execute UPDATE in a read-only transaction")),
        ProgrammingError("UPDATE", {}, Exception("permission denied")),
    ],
    ids=["unreachable", "read-only", "programming"],
)
def test_a_database_that_refuses_every_session_retries_with_bounded_delays_and_never_drops(
    service: Service, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    consumer = service.consumer
    monkeypatch.setattr(consumer, "database", _BrokenDatabase(error))
    body = service.message()
    delays = []
    for retries in range(INVOICE_POLICY.max_retries + 3):  # past max_retries: the dead letter fails too
        with pytest.raises(RetryLater) as raised:
            consumer.deliver(uuid.uuid4(), body, retries)
        delays.append(raised.value.countdown)
    assert all(0 < delay <= INVOICE_POLICY.backoff_max for delay in delays)
    assert delays[-1] == INVOICE_POLICY.backoff_max


def test_poison_message_while_the_database_is_read_only_is_retried_not_dropped(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parking needs a write too: a dead letter that cannot be written is no reason to acknowledge."""
    monkeypatch.setattr(InboxTables, "park", failing(InternalError))
    with pytest.raises(RetryLater):
        service.consumer.deliver(uuid.uuid4(), ["not", "an", "object"], 0)


def test_message_is_applied_once_the_database_is_writable_again(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = service.consumer
    message_id, body = uuid.uuid4(), service.message()
    with monkeypatch.context() as read_only:
        read_only.setattr(InboxTables, "count_delivery", failing(InternalError))
        read_only.setattr(InboxTables, "park", failing(InternalError))
        for retries in range(INVOICE_POLICY.max_retries + 3):
            with pytest.raises(RetryLater):
                consumer.deliver(message_id, body, retries)
    assert consumer.deliver(message_id, body, INVOICE_POLICY.max_retries + 3) == service.applied
    assert (service.effects(), service.letters()) == (1, [])


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
