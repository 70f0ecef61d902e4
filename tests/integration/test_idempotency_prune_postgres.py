"""Idempotency-key pruning on Postgres: bounded DELETEs that never wait for another pruner's rows."""

from __future__ import annotations

import threading

from flask_outbox.db import utcnow
from sqlalchemy import Engine, func, select, text

from order_service import idempotency
from order_service.models import IdempotencyKey

_table = IdempotencyKey.__table__


def _fill(engine: Engine, expired: int, fresh: int) -> None:
    """Expired keys (oldest first by id) and keys still valid, written in one statement each."""
    insert = text(
        "INSERT INTO idempotency_keys (client_id, key, request_hash, lock_token, locked_at, response_status,"
        " response_body, created_at, expires_at)"
        " SELECT 'c', :prefix || n, 'h', gen_random_uuid(), now(), 201, '{}', now(),"
        " now() + make_interval(secs => :offset) + n * interval '1 microsecond'"
        " FROM generate_series(1, :rows) AS n"
    )
    with engine.begin() as conn:
        conn.execute(insert, {"prefix": "old-", "offset": -3600, "rows": expired})
        conn.execute(insert, {"prefix": "new-", "offset": 3600, "rows": fresh})


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(_table)).scalar_one())


def test_a_prune_deletes_one_batch_and_the_command_drains_in_batches(orders_engine: Engine) -> None:
    _fill(orders_engine, expired=2_500, fresh=10)

    assert idempotency.prune(orders_engine, batch=1_000) == 1_000
    assert idempotency.prune_all(orders_engine, batch=1_000) == (1_500, 2)
    assert _count(orders_engine) == 10
    assert idempotency.prune_all(orders_engine, batch=1_000) == (0, 1)


def test_a_prune_skips_rows_another_pruner_holds_instead_of_waiting(orders_engine: Engine) -> None:
    _fill(orders_engine, expired=300, fresh=0)
    outcome: list[int] = []
    with orders_engine.connect() as other:
        held = other.execute(
            select(_table.c.id)
            .where(_table.c.expires_at <= utcnow())
            .order_by(_table.c.expires_at)
            .limit(100)
            .with_for_update()
        ).all()
        assert len(held) == 100

        pruner = threading.Thread(target=lambda: outcome.append(idempotency.prune(orders_engine, batch=100)))
        pruner.start()
        pruner.join(timeout=10)

        assert outcome == [100]  # finished while the other transaction still holds its 100 rows
        other.rollback()
    with orders_engine.connect() as conn:
        left = conn.execute(select(_table.c.id).where(_table.c.expires_at <= utcnow())).all()
    assert {row.id for row in held} <= {row.id for row in left}
