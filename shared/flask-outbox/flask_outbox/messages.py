"""What the relay hands a publisher: a claimed, not yet published outbox row."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flask_outbox.routes import Route

__all__ = ["BatchOutcome", "PendingMessage", "Publisher", "routed"]


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
    """Which rows of a batch reached the broker, and why the others did not.

    A row in neither was held back (an earlier row of its aggregate failed) and stays as it was.
    ``transient`` marks failures that were the broker's fault: they back off but are never parked,
    so a long outage drains by itself once the broker is back.
    """

    published: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    transient: set[int] = field(default_factory=set)
    waiting_before: int | None = None
    """Tasks that already waited in the queues the batch went to, no worker having taken them (``None``:
    the publisher cannot tell). Flow control reads it instead of asking the broker before the next claim."""


class Publisher(Protocol):
    """Sends claimed messages to the broker, in order. Must not raise for a broker fault: report it per row.

    A message is only sent if every earlier message of its aggregate in the batch was.
    """

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome: ...

    def waiting(self) -> int:
        """Tasks in this publisher's queues that no worker has taken yet (0 where it cannot tell)."""
        ...

    def reachable(self) -> bool:
        """Whether the broker answers now (a cheap probe; never raises)."""
        ...

    def close(self) -> None: ...


def routed(
    messages: list[PendingMessage], routes: Mapping[str, Route]
) -> tuple[list[tuple[PendingMessage, Route]], dict[int, str]]:
    """Pair messages with their routes; one without a route fails and holds back the rest of its aggregate."""
    sendable: list[tuple[PendingMessage, Route]] = []
    failed: dict[int, str] = {}
    blocked: set[str] = set()
    for message in messages:
        if message.aggregate_id in blocked:
            continue
        route = routes.get(message.topic)
        if route is None:
            failed[message.id] = f"no route for topic {message.topic!r}"
            blocked.add(message.aggregate_id)
            continue
        sendable.append((message, route))
    return sendable, failed
