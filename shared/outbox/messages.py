"""What the relay hands a publisher: a claimed, not yet published outbox row."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["BatchOutcome", "PendingMessage", "Publisher"]


@dataclass(frozen=True, slots=True)
class PendingMessage:
    id: int
    message_id: uuid.UUID
    topic: str
    aggregate_id: str
    payload: dict[str, Any]
    headers: dict[str, Any]
    attempts: int


@dataclass(slots=True)
class BatchOutcome:
    """Which rows of a batch reached the broker, and why the others did not."""

    published: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class Publisher(Protocol):
    """Sends claimed messages to the broker. Must not raise for a broker fault: report it per row."""

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome: ...

    def close(self) -> None: ...
