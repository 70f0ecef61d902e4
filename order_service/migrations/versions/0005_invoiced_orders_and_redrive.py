"""issue 10, order side: invoiced orders, the invoice.created inbox, outbox acknowledgement and re-drive

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import flask_outbox.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEX = "ix_outbox_unacknowledged"


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("invoice_number", sa.String(length=64), nullable=True, comment="the first one wins")
        )
        batch_op.add_column(sa.Column("invoiced_at", flask_outbox.db.UTCDateTime(timezone=True), nullable=True))

    # Nullable / server-defaulted columns: no table rewrite on Postgres 11+.
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "acknowledged_at",
                flask_outbox.db.UTCDateTime(timezone=True),
                nullable=True,
                comment="the answer arrived (topics that expect one)",
            )
        )
        batch_op.add_column(
            sa.Column(
                "redrives", sa.Integer(), server_default="0", nullable=False, comment="republished, unanswered"
            )
        )
    # Rows published before this release cannot be answered by a consumer that did not exist yet:
    # count them as acknowledged, or the first re-drive would republish the whole retained history.
    op.execute("UPDATE outbox SET acknowledged_at = published_at WHERE published_at IS NOT NULL")
    # Built CONCURRENTLY on Postgres (as 0004): every order INSERTs into the outbox meanwhile.
    index = (
        f"INDEX {_INDEX} ON outbox (redrives, published_at)"
        " WHERE acknowledged_at IS NULL AND published_at IS NOT NULL"
    )
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"CREATE {index.replace('INDEX', 'INDEX CONCURRENTLY', 1)}")
    else:
        op.execute(f"CREATE {index}")

    op.create_table(
        "processed_messages",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("topic", sa.String(length=100), nullable=False),
        sa.Column("processed_at", flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    with op.batch_alter_table("processed_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_processed_messages_processed_at"), ["processed_at"], unique=False)

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("task_name", sa.String(length=200), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    with op.batch_alter_table("processed_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_processed_messages_processed_at"))
    op.drop_table("processed_messages")
    op.execute(f"DROP INDEX IF EXISTS {_INDEX}")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("redrives")
        batch_op.drop_column("acknowledged_at")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("invoiced_at")
        batch_op.drop_column("invoice_number")
