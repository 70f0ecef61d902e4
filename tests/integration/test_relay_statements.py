"""The relay's per-batch work on Postgres: JIT is off per connection, one claim statement built once."""

from __future__ import annotations

from flask_outbox import store
from flask_outbox.db import create_db_engine
from sqlalchemy import Engine, event, text

from harness.outbox import insert_rows, outbox_rows
from order_service.models import outbox


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: seen.append(statement))
    return seen


def test_a_relay_connection_has_jit_off_and_a_batch_sends_its_claim_only(orders_engine: Engine) -> None:
    insert_rows(orders_engine, outbox_rows(6, aggregates=3))
    engine = create_db_engine(orders_engine.url.render_as_string(hide_password=False), pool_size=1)
    store.disable_jit(engine)
    try:
        seen = _statements(engine)
        published = 0
        with engine.connect() as conn:
            assert conn.scalar(text("SHOW jit")) == "off"
            conn.rollback()
            seen.clear()
            for _ in range(3):  # two rows a batch
                with conn.begin():
                    claimed = store.claim(conn, outbox, limit=2, partitions=None, partition_count=16)
                    published += len(claimed.messages)
            assert len(seen) == 3  # one claim per batch, which stamps its rows: no mark, no set_config('jit')
            assert conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) == 0
        assert published == 6
        assert not [s for s in seen if "set_config" in s]
    finally:
        engine.dispose()


def test_other_connections_still_turn_jit_off_for_the_claims_transaction(orders_engine: Engine) -> None:
    seen = _statements(orders_engine)
    with orders_engine.begin() as conn:
        store.claim(conn, outbox, limit=2, partitions=None, partition_count=16)
        assert conn.scalar(text("SHOW jit")) == "off"
    assert any("set_config('jit', 'off', true)" in s for s in seen)


def test_the_claim_statement_is_built_once_per_table_size_and_partitions() -> None:
    first = store._claim_statement(outbox, 500, (1, 2), 16, False, True)
    assert store._claim_statement(outbox, 500, (1, 2), 16, False, True) is first
    assert store._claim_statement(outbox, 500, (3,), 16, False, True) is not first
