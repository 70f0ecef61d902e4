"""The transactional outbox and its other half, the idempotent inbox, for Flask + SQLAlchemy + Celery."""

from flask_outbox.routes import Route
from flask_outbox.settings import OutboxSettings
from flask_outbox.table import define_outbox
from flask_outbox.writer import OutboxMessage, add_message

__all__ = ["OutboxMessage", "OutboxSettings", "Route", "add_message", "define_outbox"]
