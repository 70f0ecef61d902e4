"""outbox NOTIFY only for rows due now: order.placed dispatched after commit wakes no relay

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 16:30:00

The API publishes order.placed itself right after its commit (order_service.dispatch); its outbox
row is due only after OUTBOX_DISPATCH_GRACE_SECONDS. The statement trigger now notifies only when the
statement inserted a row that is due at once (flask_outbox.table.due_notify_trigger_ddl), so relays
are not woken to claim nothing for every order. Downgrade restores the unconditional trigger.
"""

from alembic import op

from flask_outbox.table import drop_notify_trigger_ddl, due_notify_trigger_ddl, notify_trigger_ddl

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in due_notify_trigger_ddl("outbox"):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in drop_notify_trigger_ddl("outbox"):
            op.execute(statement)
        for statement in notify_trigger_ddl("outbox"):
            op.execute(statement)
