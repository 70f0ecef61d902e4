"""the pipeline page's sign-outs in the orders database, seen by every API process

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 09:40:00

A cookie captured before sign-out is refused after it on every API process, whatever the broker
(sign-outs were kept in Redis, or per process with any other broker and in the embedded mode).
"""

import flask_outbox.db
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signed_out_sessions",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("signed_out_at", flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index("ix_signed_out_sessions_signed_out_at", "signed_out_sessions", ["signed_out_at"])


def downgrade() -> None:
    op.drop_index("ix_signed_out_sessions_signed_out_at", table_name="signed_out_sessions")
    op.drop_table("signed_out_sessions")
