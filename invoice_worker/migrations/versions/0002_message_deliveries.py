"""message deliveries: a per-message delivery counter that bounds poison redeliveries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 19:10:00.000000

"""
from alembic import op
import sqlalchemy as sa
import flask_outbox.db

# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('message_deliveries',
    sa.Column('message_id', sa.Uuid(), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('first_delivered_at', flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_delivered_at', flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('message_id')
    )


def downgrade() -> None:
    op.drop_table('message_deliveries')
