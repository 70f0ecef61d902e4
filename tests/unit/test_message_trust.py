"""Trusting messages: only what the relay signed is applied, ids have one spelling, keys cannot be guessed.

The tasks are called as a worker runs them (``flask_outbox.tasks``' single-message task), with the
signature in the request as Celery puts a message header there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Task
from flask_outbox import DEAD_LETTERED, InboxWorker
from flask_outbox.dead_letters import pending_ids, replay
from flask_outbox.publisher import publisher_for
from flask_outbox.signing import BAD_SIGNATURE, SIGNATURE_HEADER, MessageSigner, WeakSigningKey
from sqlalchemy import func, select

from invoice_worker.models import Invoice
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES
from tests.unit.conftest import invoice_worker_on, worker_settings
from tests.unit.test_invoice_processing import payload

REDIS = "redis://127.0.0.1:6379/0"
GOOD_KEY = "k7Qm2Zp9Vx4Rt8Ln3Hb6Wc1Yd5Fg0Js-Ue"


def run(task: Task, message_id: uuid.UUID, body: dict[str, Any], signature: str | None) -> str:
    """One delivery of ``body`` as a worker runs it; ``signature`` as the message's header said."""
    headers = {} if signature is None else {SIGNATURE_HEADER: signature}
    task.push_request(id=str(message_id), retries=0, called_directly=False, delivery_info={}, **headers)
    try:
        return str(task.run(body))
    finally:
        task.pop_request()


@pytest.fixture
def task(invoice_worker: InboxWorker) -> Task:
    return invoice_worker.app.tasks[ROUTES[ORDER_PLACED].task]


def rows(worker: InboxWorker, table: Any) -> int:
    with worker.database.session() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def reasons(worker: InboxWorker) -> list[str]:
    with worker.database.session() as session:
        return list(session.scalars(select(worker.inbox.dead_letters.c.reason)))


def test_a_re_spelled_order_id_makes_no_second_invoice_even_when_signed(
    invoice_worker: InboxWorker, task: Task
) -> None:
    """Upper case names the same UUID to ``uuid.UUID()``, but not to the invoices' UNIQUE text column."""
    body = payload()
    first = uuid.uuid4()
    assert run(task, first, body, invoice_worker.signer.sign(first, ORDER_PLACED, body)) == "created"

    forged, again = payload(order_id=body["order_id"].upper()), uuid.uuid4()
    outcome = run(task, again, forged, invoice_worker.signer.sign(again, ORDER_PLACED, forged))

    assert outcome == DEAD_LETTERED
    assert rows(invoice_worker, Invoice) == 1
    [reason] = reasons(invoice_worker)
    assert reason.startswith("ValidationError")
    assert "order_id" in reason


@pytest.mark.parametrize(
    "forge",
    [
        lambda signer, mid, body: None,
        lambda signer, mid, body: "0" * 64,
        lambda signer, mid, body: MessageSigner(GOOD_KEY.encode()).sign(mid, ORDER_PLACED, body),
        lambda signer, mid, body: signer.sign(mid, ORDER_PLACED, {**body, "amount_total": 1}),
        lambda signer, mid, body: signer.sign(uuid.uuid4(), ORDER_PLACED, body),
        lambda signer, mid, body: signer.sign(mid, "invoice.created", body),
    ],
    ids=["unsigned", "garbage", "another-key", "another-payload", "another-id", "another-topic"],
)
def test_a_message_without_the_relays_signature_is_parked_and_writes_nothing_else(
    invoice_worker: InboxWorker, task: Task, forge: Any
) -> None:
    message_id, body = uuid.uuid4(), payload()

    assert run(task, message_id, body, forge(invoice_worker.signer, message_id, body)) == DEAD_LETTERED

    assert rows(invoice_worker, Invoice) == 0
    assert rows(invoice_worker, invoice_worker.inbox.processed) == 0
    assert rows(invoice_worker, invoice_worker.inbox.deliveries) == 0
    [reason] = reasons(invoice_worker)
    assert reason.startswith(BAD_SIGNATURE)


def test_a_forged_dead_letter_is_never_replayed_and_the_real_message_still_applies(
    invoice_worker: InboxWorker, task: Task
) -> None:
    """A forger who reuses a real message id parks a letter under it; the relay's copy still goes through."""
    message_id, body = uuid.uuid4(), payload()
    assert run(task, message_id, payload(customer_id="cus_forged"), None) == DEAD_LETTERED
    [letter_id] = pending_ids(invoice_worker)

    refused = replay(invoice_worker, letter_id)
    assert (refused.succeeded, rows(invoice_worker, Invoice)) == (False, 0)
    assert refused.outcome.startswith(f"not replayed: {BAD_SIGNATURE}")

    assert (
        run(task, message_id, body, invoice_worker.signer.sign(message_id, ORDER_PLACED, body)) == "created"
    )
    with invoice_worker.database.session() as session:
        assert session.scalar(select(Invoice.customer_id)) == "cus_1"


def test_the_embedded_mode_generates_one_private_key_its_processes_share(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    assert settings.uses_embedded_broker
    assert not settings.message_signing_key

    first, second = MessageSigner.from_settings(settings), MessageSigner.from_settings(settings)

    key_file = tmp_path / "var" / "signing-key"
    assert first == second
    assert first.key == key_file.read_text().strip().encode()
    assert len(first.key) >= 32
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert GOOD_KEY not in repr(Settings(message_signing_key=GOOD_KEY)), "the key stays out of logs"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "is not set"),
        ("k" + "x7" * 10, "has 21 characters, fewer than 32"),
        ("change-me-to-a-long-random-signing-key", "is a placeholder"),
        ("a" * 48, "is a placeholder"),
    ],
    ids=["empty", "short", "placeholder", "one-character"],
)
def test_outside_the_embedded_mode_a_guessable_key_refuses_to_start_the_relay_and_the_worker(
    tmp_path: Path, key: str, problem: str
) -> None:
    settings = worker_settings(tmp_path / "var", broker_url=REDIS, message_signing_key=key)

    with pytest.raises(WeakSigningKey, match=f"MESSAGE_SIGNING_KEY {problem}"):
        publisher_for(settings, ROUTES)
    with pytest.raises(WeakSigningKey, match=f"MESSAGE_SIGNING_KEY {problem}"):
        next(invoice_worker_on(settings))
    assert not (tmp_path / "var" / "signing-key").exists(), "only the embedded mode generates a key"


@pytest.fixture
def redis_worker(tmp_path: Path) -> Iterator[InboxWorker]:
    yield from invoice_worker_on(
        worker_settings(tmp_path / "var", broker_url=REDIS, message_signing_key=GOOD_KEY)
    )


def test_what_the_relay_signs_the_worker_accepts_whatever_the_payloads_key_order(
    redis_worker: InboxWorker,
) -> None:
    """The payload is signed as canonical JSON: a JSONB column and kombu may order its keys differently."""
    message_id, body = uuid.uuid4(), payload()
    signature = MessageSigner(GOOD_KEY.encode()).sign(message_id, ORDER_PLACED, body)
    reordered = dict(reversed(list(body.items())))

    assert redis_worker.signer.verifies(message_id, ORDER_PLACED, reordered, signature)
    task = redis_worker.app.tasks[ROUTES[ORDER_PLACED].task]
    assert run(task, message_id, reordered, signature) == "created"


OLD_KEY = "Pq3Wn8Xz5Rc2Lv7Hm4Tb9Yk6Dg1Fs0Ja-Ne"
THIRD_KEY = "Tz6Bc1Nq8Wm3Kd5Vr2Hx9Lp4Gs7Fj0Ya-Ue"


@pytest.fixture
def rotating_worker(tmp_path: Path) -> Iterator[InboxWorker]:
    """A worker part-way through a rotation: ``MESSAGE_SIGNING_KEY=new,old``."""
    yield from invoice_worker_on(
        worker_settings(tmp_path / "var", broker_url=REDIS, message_signing_key=f"{GOOD_KEY},{OLD_KEY}")
    )


def test_a_rotation_signs_with_the_new_key_and_still_applies_what_the_old_one_signed(
    rotating_worker: InboxWorker,
) -> None:
    """Relays and workers change keys one by one: no message signed by either key is refused meanwhile."""
    signer, task = rotating_worker.signer, rotating_worker.app.tasks[ROUTES[ORDER_PLACED].task]
    message_id, body = uuid.uuid4(), payload()
    by_old, by_third = (
        MessageSigner(key.encode()).sign(message_id, ORDER_PLACED, body) for key in (OLD_KEY, THIRD_KEY)
    )

    assert signer.sign(message_id, ORDER_PLACED, body) == MessageSigner(GOOD_KEY.encode()).sign(
        message_id, ORDER_PLACED, body
    )
    assert not signer.verifies(message_id, ORDER_PLACED, body, by_third)
    assert run(task, message_id, body, by_old) == "created"
    assert rows(rotating_worker, Invoice) == 1
    assert reasons(rotating_worker) == []


def test_each_key_of_a_rotation_must_be_strong(tmp_path: Path) -> None:
    settings = worker_settings(
        tmp_path / "var", broker_url=REDIS, message_signing_key=f"{GOOD_KEY},too-short"
    )

    with pytest.raises(WeakSigningKey, match=r"MESSAGE_SIGNING_KEY \(key 2 of 2\) has 9 characters"):
        publisher_for(settings, ROUTES)
