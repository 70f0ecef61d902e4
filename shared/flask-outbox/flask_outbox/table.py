"""The outbox table, defined on whatever metadata a service owns."""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, SmallInteger, String, Table, Text, Uuid, text

from flask_outbox.db import BigIntPK, JSONDocument, UTCDateTime

__all__ = [
    "BUCKETS",
    "NOTIFY_CHANNEL",
    "define_outbox",
    "drop_notify_trigger_ddl",
    "due_notify_trigger_ddl",
    "notify_trigger_ddl",
]

BUCKETS = 1024
"""Rows are hashed by aggregate into this many buckets; relays own buckets to keep per-aggregate order."""

NOTIFY_CHANNEL = "outbox"
"""Relays LISTEN here; every statement that inserts outbox rows NOTIFYs it (Postgres)."""

_PENDING = text("published_at IS NULL AND parked_at IS NULL")
_FAILED_UNPUBLISHED = text("published_at IS NULL AND attempts > 0")
_UNACKNOWLEDGED = text("acknowledged_at IS NULL AND published_at IS NOT NULL")


def define_outbox(metadata: MetaData, name: str = "outbox", *, answered: bool = False) -> Table:
    """Add the outbox table to ``metadata`` (once per service) and return it.

    ``answered``: some of its topics expect an answer (``RelayPolicy.expects_answer``), so the
    unacknowledged published rows get the index the re-drive looks them up by.
    """
    redrive_index = (
        [
            Index(
                f"ix_{name}_unacknowledged",
                "redrives",
                "published_at",
                postgresql_where=_UNACKNOWLEDGED,
                sqlite_where=_UNACKNOWLEDGED,
            )
        ]
        if answered
        else []
    )
    return Table(
        name,
        metadata,
        Column("id", BigIntPK, primary_key=True, autoincrement=True, comment="publish order"),
        Column("message_id", Uuid, nullable=False, unique=True, comment="Celery task id, consumer dedup key"),
        Column("topic", String(100), nullable=False),
        Column("aggregate_type", String(50), nullable=False),
        Column("aggregate_id", String(64), nullable=False),
        Column("bucket", SmallInteger, nullable=False, comment=f"crc32(aggregate_id) % {BUCKETS}"),
        Column("payload", JSONDocument, nullable=False),
        Column("headers", JSONDocument, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("available_at", UTCDateTime, nullable=False),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("last_error", Text),
        Column("published_at", UTCDateTime),
        Column("parked_at", UTCDateTime),
        Column("acknowledged_at", UTCDateTime, comment="the answer arrived (topics that expect one)"),
        Column("redrives", Integer, nullable=False, server_default="0", comment="republished, unanswered"),
        Index(
            f"ix_{name}_pending",
            "id",
            postgresql_where=_PENDING,
            sqlite_where=_PENDING,
        ),
        Index(
            f"ix_{name}_failed_unpublished",
            "aggregate_id",
            "id",
            postgresql_where=_FAILED_UNPUBLISHED,
            sqlite_where=_FAILED_UNPUBLISHED,
        ),  # the claim's order guard (store.claim); holds only rows that failed, so INSERTs skip it
        Index(f"ix_{name}_published_at", "published_at"),
        *redrive_index,  # one range per re-drive level: the lookup touches only rows that are due
    )


def notify_trigger_ddl(name: str = "outbox") -> tuple[str, ...]:
    """Postgres DDL: NOTIFY once per INSERT statement, delivered at commit (for a migration).

    A trigger rather than a ``pg_notify`` call from the writer: the notification rides on the
    INSERT itself, with no extra round trip, and no writer can forget it.
    """
    return (
        f"""CREATE FUNCTION {name}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
            RETURN NULL;
        END $$""",
        f"CREATE TRIGGER {name}_notify AFTER INSERT ON {name} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {name}_notify()",
    )


def due_notify_trigger_ddl(name: str = "outbox") -> tuple[str, ...]:
    """Postgres DDL: as ``notify_trigger_ddl``, but only for a statement that inserted a row due now.

    Writers add rows due at once (``flask_outbox.writer``), so today this notifies for every commit
    that added rows; a row scheduled later (a retry's ``available_at``) would wake no relay for
    nothing. The statement's new rows are read from its transition table, once per statement.
    """
    return (
        f"""CREATE OR REPLACE FUNCTION {name}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM inserted WHERE available_at <= now()) THEN
                PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
            END IF;
            RETURN NULL;
        END $$""",  # noqa: S608 - name is the service's own table name, never input
        f"DROP TRIGGER IF EXISTS {name}_notify ON {name}",
        f"CREATE TRIGGER {name}_notify AFTER INSERT ON {name} REFERENCING NEW TABLE AS inserted "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {name}_notify()",
    )


def drop_notify_trigger_ddl(name: str = "outbox") -> tuple[str, ...]:
    return (f"DROP TRIGGER IF EXISTS {name}_notify ON {name}", f"DROP FUNCTION IF EXISTS {name}_notify()")
