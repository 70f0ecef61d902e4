"""invoice outbox (invoice.created answers) with its NOTIFY trigger; indexes the inbox retention prunes by

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 12:35:00

"""
from alembic import op
import sqlalchemy as sa
import flask_outbox.db
from sqlalchemy.dialects import postgresql

from flask_outbox.table import drop_notify_trigger_ddl, notify_trigger_ddl

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_PENDING = sa.text('published_at IS NULL AND parked_at IS NULL')
_FAILED_UNPUBLISHED = sa.text('published_at IS NULL AND attempts > 0')


def upgrade() -> None:
    # The table of flask_outbox.define_outbox (answered=False: invoice.created expects no answer).
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False, comment='publish order'),
    sa.Column('message_id', sa.Uuid(), nullable=False, comment='Celery task id, consumer dedup key'),
    sa.Column('topic', sa.String(length=100), nullable=False),
    sa.Column('aggregate_type', sa.String(length=50), nullable=False),
    sa.Column('aggregate_id', sa.String(length=64), nullable=False),
    sa.Column('bucket', sa.SmallInteger(), nullable=False, comment='crc32(aggregate_id) % 1024'),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('headers', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('available_at', flask_outbox.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('published_at', flask_outbox.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('parked_at', flask_outbox.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_at', flask_outbox.db.UTCDateTime(timezone=True), nullable=True, comment='the answer arrived (topics that expect one)'),
    sa.Column('redrives', sa.Integer(), server_default='0', nullable=False, comment='republished, unanswered'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_pending', ['id'], unique=False, postgresql_where=_PENDING, sqlite_where=_PENDING)
        # The claim's order guard (as orders' 0004); a new, empty table needs no CONCURRENTLY.
        batch_op.create_index('ix_outbox_failed_unpublished', ['aggregate_id', 'id'], unique=False, postgresql_where=_FAILED_UNPUBLISHED, sqlite_where=_FAILED_UNPUBLISHED)
        batch_op.create_index('ix_outbox_published_at', ['published_at'], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        for statement in notify_trigger_ddl("outbox"):
            op.execute(statement)

    # Retention (invoice_worker.retention) deletes the oldest rows first, by these.
    with op.batch_alter_table('message_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_deliveries_last_delivered_at'), ['last_delivered_at'], unique=False)

    with op.batch_alter_table('processed_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_processed_messages_processed_at'), ['processed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('processed_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_processed_messages_processed_at'))

    with op.batch_alter_table('message_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_deliveries_last_delivered_at'))

    if op.get_bind().dialect.name == "postgresql":
        for statement in drop_notify_trigger_ddl("outbox"):
            op.execute(statement)

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_published_at')
        batch_op.drop_index('ix_outbox_failed_unpublished', postgresql_where=_FAILED_UNPUBLISHED, sqlite_where=_FAILED_UNPUBLISHED)
        batch_op.drop_index('ix_outbox_pending', postgresql_where=_PENDING, sqlite_where=_PENDING)

    op.drop_table('outbox')
