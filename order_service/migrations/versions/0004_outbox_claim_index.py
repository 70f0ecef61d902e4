"""outbox claim index: the order guard probes (aggregate_id, id) of unpublished rows that failed

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 13:00:00

The relay's claim skips a row while an earlier row of its aggregate is unpublished and has failed
(in backoff or parked; flask_outbox.store.claim): one probe of this index per candidate row,
instead of a scan of the whole backlog. Only failed rows are in it, so an order's INSERT skips it.

Built CONCURRENTLY on Postgres: the outbox is written by every order, and a plain CREATE INDEX
would block those INSERTs for as long as the build scans the table.
A failed concurrent build leaves an INVALID index: drop it and upgrade again.
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_INDEX = "ix_outbox_failed_unpublished"
_WHERE = "published_at IS NULL AND attempts > 0"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"CREATE INDEX CONCURRENTLY {_INDEX} ON outbox (aggregate_id, id) WHERE {_WHERE}")
    else:
        op.execute(f"CREATE INDEX {_INDEX} ON outbox (aggregate_id, id) WHERE {_WHERE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
    else:
        op.execute(f"DROP INDEX {_INDEX}")
