"""the order consumer's inbox is the library's: delivery counts, and dead letters that can be replayed

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 07:00:00

The order consumer now runs flask_outbox's consumer, with the invoice worker's rules: deliveries are
counted before the work (message_deliveries), and a dead letter records when it was replayed.
"""

import flask_outbox.db
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_deliveries",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("first_delivered_at", flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_delivered_at", flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index(
        "ix_message_deliveries_last_delivered_at", "message_deliveries", ["last_delivered_at"], unique=False
    )
    with op.batch_alter_table("dead_letters") as batch:
        batch.add_column(sa.Column("replayed_at", flask_outbox.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("replayed_at")
    op.drop_index("ix_message_deliveries_last_delivered_at", table_name="message_deliveries")
    op.drop_table("message_deliveries")
