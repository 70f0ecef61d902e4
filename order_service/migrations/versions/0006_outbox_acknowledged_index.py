"""outbox acknowledged_at index: the pipeline page counts and times orders invoiced in its window

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 16:00:00

The dashboard (order_service.pipeline) reads the order.placed rows acknowledged in the last
minutes, polled every few seconds: one index range instead of a scan of the retained outbox.
Partial (acknowledged rows only), so an order's INSERT skips it; the acknowledging UPDATE already
moves the row out of ix_outbox_unacknowledged, so it adds one index entry where one is removed.

Built CONCURRENTLY on Postgres (as 0004): every order INSERTs into the outbox meanwhile.
A failed concurrent build leaves an INVALID index: drop it and upgrade again.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_INDEX = "ix_outbox_acknowledged_at"
_WHERE = "acknowledged_at IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"CREATE INDEX CONCURRENTLY {_INDEX} ON outbox (acknowledged_at) WHERE {_WHERE}")
    else:
        op.execute(f"CREATE INDEX {_INDEX} ON outbox (acknowledged_at) WHERE {_WHERE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
    else:
        op.execute(f"DROP INDEX {_INDEX}")
