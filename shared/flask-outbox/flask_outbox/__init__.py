"""The transactional outbox and its other half, the idempotent inbox, for Flask + SQLAlchemy + Celery.

Writing: ``Outbox`` (the Flask extension: a message in ``db.session``'s transaction), ``define_outbox``
(the table), ``add_message``; ``UnsafeDispatch``: the guard against publishing inside a transaction.
Relaying: ``RelayProgram`` (the relay process of one database's outbox).
Consuming: ``define_inbox`` (the tables), ``InboxWorker`` (the Celery app) and a ``Handler`` per topic.
"""

from flask_outbox.consumer import DEAD_LETTERED, DUPLICATE, Delivery, DeliveryPolicy, Handler, InvalidMessage
from flask_outbox.dead_letters import add_commands as add_inbox_commands
from flask_outbox.dead_letters import main as inbox_commands
from flask_outbox.dead_letters import run_command as run_inbox_command
from flask_outbox.extension import Outbox
from flask_outbox.guard import UnsafeDispatch, UnsafeDispatchWarning
from flask_outbox.inbox import InboxTables, define_inbox
from flask_outbox.program import RelayProgram
from flask_outbox.routes import Route
from flask_outbox.settings import OutboxSettings
from flask_outbox.table import define_outbox
from flask_outbox.worker import InboxWorker
from flask_outbox.worker_db import WorkerDatabase
from flask_outbox.writer import OutboxMessage, add_message

__all__ = [
    "DEAD_LETTERED",
    "DUPLICATE",
    "Delivery",
    "DeliveryPolicy",
    "Handler",
    "InboxTables",
    "InboxWorker",
    "InvalidMessage",
    "Outbox",
    "OutboxMessage",
    "OutboxSettings",
    "RelayProgram",
    "Route",
    "UnsafeDispatch",
    "UnsafeDispatchWarning",
    "WorkerDatabase",
    "add_inbox_commands",
    "add_message",
    "define_inbox",
    "define_outbox",
    "inbox_commands",
    "run_inbox_command",
]
