"""The transactional outbox and its other half, the idempotent inbox, for Flask + SQLAlchemy + Celery.

Writing: ``Outbox`` (the Flask extension: ``outbox.add`` in ``db.session``'s transaction), or
``define_outbox`` + ``add_message`` on any session; ``UnsafeDispatch``: publishing a task inside an
open transaction with writes, reported in debug and tests. Relaying: ``RelayProgram``, the relay
process of one database's outbox. Consuming: ``define_inbox``, ``InboxWorker`` (the Celery app) and a
``Handler`` per topic; ``inbox_commands`` for dead letters and pruning. Settings: ``OutboxSettings``,
one class per part. The rest is what the application's own processes share with the library's:
portable column types and clocks, logging with correlation ids, tracing, Prometheus metrics.
"""

from flask_outbox.committed import after_commit
from flask_outbox.consumer import (
    DEAD_LETTERED,
    DUPLICATE,
    Delivery,
    DeliveryPolicy,
    Handler,
    InvalidMessage,
    batch_json,
)
from flask_outbox.credentials import WeakCredential, check_url_password
from flask_outbox.db import (
    BigIntPK,
    JSONDocument,
    UTCDateTime,
    database_clock,
    engine_options,
    install_engine_events,
    is_postgres,
    utcnow,
)
from flask_outbox.dead_letters import add_commands as add_inbox_commands
from flask_outbox.dead_letters import main as inbox_commands
from flask_outbox.dead_letters import run_command as run_inbox_command
from flask_outbox.extension import Outbox
from flask_outbox.guard import UnsafeDispatch, UnsafeDispatchWarning
from flask_outbox.inbox import InboxTables, define_inbox
from flask_outbox.logs import bind_correlation, configure_logging, valid_correlation_id
from flask_outbox.metrics import enable_multiprocess, serve_metrics
from flask_outbox.program import RelayProgram
from flask_outbox.routes import Route
from flask_outbox.settings import (
    ConsumerSettings,
    OutboxSettings,
    PipelineSettings,
    RelaySettings,
    markdown_table,
)
from flask_outbox.table import define_outbox
from flask_outbox.tracing import configure_tracing, instrument_flask
from flask_outbox.worker import InboxWorker
from flask_outbox.worker_db import WorkerDatabase
from flask_outbox.worker_metrics import OnOutcome
from flask_outbox.writer import OutboxMessage, add_message

__all__ = [  # noqa: RUF022 - grouped by part, not sorted
    # writing
    "Outbox",
    "OutboxMessage",
    "UnsafeDispatch",
    "UnsafeDispatchWarning",
    "add_message",
    "define_outbox",
    # relaying
    "RelayProgram",
    "Route",
    # consuming
    "DEAD_LETTERED",
    "DUPLICATE",
    "Delivery",
    "DeliveryPolicy",
    "Handler",
    "InboxTables",
    "InboxWorker",
    "InvalidMessage",
    "OnOutcome",
    "WorkerDatabase",
    "add_inbox_commands",
    "after_commit",
    "batch_json",
    "define_inbox",
    "inbox_commands",
    "run_inbox_command",
    # settings
    "ConsumerSettings",
    "OutboxSettings",
    "PipelineSettings",
    "RelaySettings",
    "WeakCredential",
    "check_url_password",
    "markdown_table",
    # what the application's processes share with the library's
    "BigIntPK",
    "JSONDocument",
    "UTCDateTime",
    "bind_correlation",
    "configure_logging",
    "configure_tracing",
    "database_clock",
    "enable_multiprocess",
    "engine_options",
    "install_engine_events",
    "instrument_flask",
    "is_postgres",
    "serve_metrics",
    "utcnow",
    "valid_correlation_id",
]
