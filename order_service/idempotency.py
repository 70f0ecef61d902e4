"""Idempotency-Key (IETF httpapi draft / Stripe semantics) for ``POST /orders``.

A key is claimed by INSERTing its row in a short transaction of its own: the UNIQUE
(client_id, key) constraint decides the race between concurrent retries, never a check-then-insert.
The stored response is written by ``record_response``, an ``order_placed`` receiver, *inside the
order's transaction*, so the order and its replayable response commit together: no crash can leave an
order whose key still looks unanswered. The order's unit of work stays untouched.

**A stored response is final.** Until the key expires, nothing deletes it or takes it over: every
write other than expiry is conditional on ``response_status IS NULL`` (and on the writer's lock token),
checked by the database in the same statement, not by an earlier read.

- A claim whose request died (process crash) can be taken over after ``LOCK_SECONDS``.
  The takeover changes the lock token, so a late original fails its conditional update and rolls back.
  If the original commits its answer while the takeover is under way, the takeover matches no row
  (on Postgres its UPDATE waits for the original's row lock, then re-checks the committed row) and
  the retry replays the answer.
- ``release`` deletes only an unanswered claim: a request can fail *after* its COMMIT landed
  (the acknowledgement was lost), and its stored 201 must then stay for the retry to replay.

**Pruning** expired keys is never one unbounded DELETE in a live request: each ``prune`` deletes at
most ``PRUNE_BATCH`` rows in its own short transaction, run after a response is sent. A process
prunes once per ``PRUNE_INTERVAL``, and again at its next keyed request for as long as its batches
come back full: each keyed request adds one key and may remove a thousand, so pruning keeps up with
any insert rate, with no setting. The CLI ``flask --app order_service idempotency-keys prune``
(``cli``) drains a backlog at once.

**Commits.** ``claim``, ``release`` and ``prune`` each commit a short transaction of their own, outside
the order's unit of work (``services.place_order``), on purpose: a claim must be visible to a
concurrent retry *before* the order is placed, and a release or a prune must not wait for (or roll back
with) any order. ``record_response`` only writes on the order's session, which ``place_order`` commits.
The table is ``models.IdempotencyKey``; the 409/422 problem documents are in ``problems``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from flask import Flask, Response, after_this_request
from flask_outbox import utcnow
from sqlalchemy import Connection, Engine, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from order_service.extensions import AppState
from order_service.models import IdempotencyKey, Order
from order_service.signals import order_placed
from shared.config import Settings

__all__ = [
    "KEY_TTL_SECONDS",
    "LOCK_SECONDS",
    "PRUNE_BATCH",
    "PRUNE_INTERVAL",
    "Claim",
    "KeyInFlight",
    "KeyReused",
    "Recording",
    "Replay",
    "claim",
    "init_idempotency",
    "prune",
    "prune_all",
    "prune_when_due",
    "record_response",
    "recorded_with_order",
    "release",
    "request_hash",
]

log = structlog.get_logger(__name__)

KEY_TTL_SECONDS = 24 * 3600.0
"""How long a key's answer is replayed: the contract's day (a client retries within it, as with Stripe's)."""
LOCK_SECONDS = 60.0
"""A claim older than this is a dead request's and may be taken over: far above any live request
(the API's own timeouts are seconds), far below a client's patience."""
PRUNE_INTERVAL = 300.0
"""Seconds between the bounded prunes each API process runs after a response."""
PRUNE_BATCH = 1_000
"""Expired keys per DELETE; a request prunes one batch in passing, the CLI loops."""


_table = IdempotencyKey.__table__
_unanswered = _table.c.response_status.is_(None)
# Built once: composing a statement per request (and its cache key) cost more CPU than running it.
_CLAIM_ROW = insert(_table).returning(_table.c.id)
_STORE_RESPONSE = (
    update(_table)
    .where(_table.c.id == bindparam("row_id"), _table.c.lock_token == bindparam("token"), _unanswered)
    .values(response_status=201, response_body=bindparam("body"))
)


class KeyReused(Exception):
    """The key was first used with a different request."""


class KeyInFlight(Exception):
    """The first request with this key has not finished."""


@dataclass(frozen=True, slots=True)
class Claim:
    row_id: int
    token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: str


def request_hash(method: str, path: str, body: Any) -> str:
    """Fingerprint of the request: key order and whitespace of the JSON do not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode(errors="surrogatepass")).hexdigest()


def _insert(engine: Engine, values: dict[str, Any]) -> int | None:
    """The claim's INSERT, committed on its own: one statement in autocommit, one round trip where
    BEGIN, INSERT and COMMIT were three (the same transaction: a single statement is atomic)."""
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return int(conn.execute(_CLAIM_ROW, values).scalar_one())
    except IntegrityError:
        return None


def claim(
    engine: Engine,
    settings: Settings,
    client_id: str,
    key: str,
    fingerprint: str,
    now: datetime | None = None,
) -> Claim | Replay:
    """Own the key (``Claim``), or learn the stored answer (``Replay``); raises on misuse or in-flight."""
    now = now or utcnow()
    token = uuid.uuid4()
    values = {
        "client_id": client_id,
        "key": key,
        "request_hash": fingerprint,
        "lock_token": token,
        "locked_at": now,
        "created_at": now,
        "expires_at": now + timedelta(seconds=KEY_TTL_SECONDS),
    }
    for _attempt in range(3):
        row_id = _insert(engine, values)
        if row_id is not None:
            return Claim(row_id, token)
        with engine.begin() as conn:
            row = conn.execute(
                select(_table).where(_table.c.client_id == client_id, _table.c.key == key)
            ).first()
            if row is None:
                continue  # pruned or released between our insert and this read
            if row.expires_at <= now:
                conn.execute(delete(_table).where(_table.c.id == row.id, _table.c.expires_at <= now))
                continue
            if row.request_hash != fingerprint:
                raise KeyReused(key)
            if row.response_status is not None:
                return Replay(row.response_status, row.response_body or "")
            if row.locked_at > now - timedelta(seconds=LOCK_SECONDS):
                raise KeyInFlight(key)
            if _take_over(conn, row.id, row.lock_token, token, now):
                log.warning("idempotency.stale_claim_taken_over", client=client_id, key_row=row.id)
                return Claim(row.id, token)
        # The row changed since we read it: answered, taken by another retry or released. Read again.
    raise KeyInFlight(key)


def _take_over(conn: Connection, row_id: int, seen_token: uuid.UUID, token: uuid.UUID, now: datetime) -> bool:
    """Move a stale claim to ``token`` if it is still unanswered and still the claim we read."""
    taken = conn.execute(
        update(_table)
        .where(_table.c.id == row_id, _table.c.lock_token == seen_token, _unanswered)
        .values(lock_token=token, locked_at=now)
    )
    return taken.rowcount == 1


_CLAIM = "order_service.idempotency_claim"


@dataclass(slots=True)
class Recording:
    """A claim being answered; ``record_response`` leaves the 201 body it stored in ``body``."""

    claim: Claim
    render: Callable[[Order], str]
    body: str | None = None


@contextmanager
def recorded_with_order(
    session: Session, owned: Claim, render: Callable[[Order], str]
) -> Iterator[Recording]:
    """While placing one order, write its 201 response onto the claimed row in the same transaction.

    The claim rides on the session (``session.info``) to ``record_response``, a receiver of
    ``order_placed``: the response is written after the order, before its commit. The body it stored
    is left on the yielded ``Recording``, so the request renders it once.
    """
    recording = Recording(owned, render)
    session.info[_CLAIM] = recording
    try:
        yield recording
    finally:
        session.info.pop(_CLAIM, None)


def record_response(sender: Any, *, order: Order, session: Session, **_: Any) -> None:
    """``order_placed`` receiver: store the 201 on the request's claimed key, if it has one."""
    recording: Recording | None = session.info.get(_CLAIM)
    if recording is None:
        return
    body = recording.render(order)
    owned = recording.claim
    stored = session.connection().execute(
        _STORE_RESPONSE, {"row_id": owned.row_id, "token": owned.token, "body": body}
    )
    if stored.rowcount != 1:
        raise KeyInFlight("the claim was taken over")  # rolls the order back
    recording.body = body


def release(engine: Engine, owned: Claim) -> None:
    """Forget a claim whose request failed, so the client may retry with the same key.

    Only while it is unanswered: if the order's COMMIT landed and only its acknowledgement was lost,
    the stored 201 stays and the retry replays it instead of placing a second order.
    """
    with engine.begin() as conn:
        released = conn.execute(
            delete(_table).where(_table.c.id == owned.row_id, _table.c.lock_token == owned.token, _unanswered)
        )
    if released.rowcount != 1:
        log.warning("idempotency.claim_kept_answered_or_taken_over", key_row=owned.row_id)


def prune(engine: Engine, *, batch: int, now: datetime | None = None) -> int:
    """Delete up to ``batch`` expired keys (oldest first) in one short transaction; returns how many.

    Never one unbounded DELETE: the rows are picked by ``expires_at`` (indexed) with a LIMIT, and on
    Postgres rows another pruner holds are skipped rather than waited for.
    """
    expired = (
        select(_table.c.id)
        .where(_table.c.expires_at <= (now or utcnow()))
        .order_by(_table.c.expires_at)
        .limit(batch)
        .with_for_update(skip_locked=True)  # not rendered on SQLite, whose writers are serialised anyway
    )
    with engine.begin() as conn:
        return int(conn.execute(delete(_table).where(_table.c.id.in_(expired.scalar_subquery()))).rowcount)


def prune_all(engine: Engine, *, batch: int, now: datetime | None = None) -> tuple[int, int]:
    """Delete every key expired at ``now``, ``batch`` rows per transaction; returns (rows, batches)."""
    now = now or utcnow()
    removed = batches = 0
    while True:
        deleted = prune(engine, batch=batch, now=now)
        removed, batches = removed + deleted, batches + 1
        if deleted < batch:
            return removed, batches


@dataclass
class _Pruner:
    """At most one bounded batch per interval per process, run after a response has been sent.

    Requests with an Idempotency-Key schedule it in passing, so expired keys never pile up even
    without the CLI: after a full batch the next keyed request prunes again, whatever the interval.
    """

    interval: float
    batch: int
    last: float = -math.inf  # due at once, even on a host up for less than one interval

    def due(self) -> bool:
        if time.monotonic() - self.last < self.interval:
            return False
        self.last = time.monotonic()
        return True

    def run(self, engine: Engine) -> None:
        try:
            removed = prune(engine, batch=self.batch)
        except SQLAlchemyError as exc:  # the response is already sent; the next interval tries again
            log.warning("idempotency.prune_failed", error=str(exc))
            return
        if removed:
            log.info("idempotency.pruned", removed=removed, batch=self.batch)
        if removed >= self.batch:
            self.last = -math.inf  # more keys have expired: the next keyed request prunes again


_PRUNER: AppState[_Pruner] = AppState("order_service.idempotency_pruner")


def prune_when_due(app: Flask, engine: Engine) -> None:
    """Schedule one bounded prune after this request's response is sent, if one is due."""
    pruner = _PRUNER.get(app)
    if not pruner.due():
        return

    @after_this_request
    def _after_sending(response: Response) -> Response:
        response.call_on_close(lambda: pruner.run(engine))
        return response


def init_idempotency(app: Flask, settings: Settings) -> None:
    _PRUNER.init_app(app, _Pruner(PRUNE_INTERVAL, PRUNE_BATCH))
    order_placed.connect(record_response, weak=False)  # after the outbox receiver; connecting is idempotent
