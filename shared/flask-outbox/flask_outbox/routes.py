"""Where a topic is delivered: the Celery task name and its queue."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Route"]


class Route(BaseModel):
    """Where a topic is delivered: the Celery task name and its queue.

    ``batch_task`` takes several messages of the topic in one Celery message (``messages``: a list of
    ``{"message_id", "payload", "headers"}``); a relay that has more than one to send at once may use
    it (``flask_outbox.batches``). ``task`` takes one (``payload``, the message id as the task id).
    """

    model_config = ConfigDict(frozen=True)

    task: str
    queue: str
    batch_task: str | None = None
