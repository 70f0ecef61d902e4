"""outbox NOTIFY trigger: relays wake on commit without an extra round trip per order

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 20:20:00

"""
from alembic import op

from flask_outbox.table import drop_notify_trigger_ddl, notify_trigger_ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in notify_trigger_ddl("outbox"):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in drop_notify_trigger_ddl("outbox"):
            op.execute(statement)
