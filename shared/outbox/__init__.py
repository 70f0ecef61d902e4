"""The transactional outbox: a table any service adds to its metadata, a writer, and a relay."""

from shared.outbox.table import define_outbox
from shared.outbox.writer import OutboxMessage, add_message

__all__ = ["OutboxMessage", "add_message", "define_outbox"]
