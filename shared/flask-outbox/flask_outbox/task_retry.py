"""How a Celery task that must not lose its message asks to be run again."""

from __future__ import annotations

from typing import NoReturn

import structlog
from celery import Task
from celery.exceptions import Reject, Retry

__all__ = ["retry_or_requeue"]

log = structlog.get_logger(__name__)


def retry_or_requeue(task: Task, reason: Exception, countdown: float, event: str) -> NoReturn:
    """Publish the retry and raise ``Retry``; if the publish fails, put this delivery back instead.

    Celery answers a retry whose publish failed (the broker is down) with ``Reject(requeue=False)``,
    and kombu's Redis transport carries that out as a delete, exactly like an acknowledgement
    (``QoS.reject``; ``task_acks_on_failure_or_timeout=False`` does not help for the same reason).
    ``Reject(requeue=True)`` pushes the message back to the head of its queue. When Redis itself is
    unreachable that reject fails as well, and the message simply stays in Redis's unacked set until
    the visibility timeout restores it. Leaving a message unacknowledged on purpose is no
    alternative: kombu keeps counting it against the prefetch limit, so the worker would starve.

    ``event`` prefixes the log lines (``<event>.retry_scheduled``, ``<event>.retry_not_published``).
    """
    log.info(f"{event}.retry_scheduled", countdown=round(countdown, 2), retries=task.request.retries)
    try:
        raise task.retry(exc=reason, countdown=countdown)
    except Retry:
        raise
    except Exception as publish_error:  # Celery's Reject(requeue=False), or the publish error itself
        cause = publish_error.reason if isinstance(publish_error, Reject) else publish_error
        error = f"retry not published: {type(cause).__name__}: {cause}"
        log.error(f"{event}.retry_not_published", error=error)
        raise Reject(error, requeue=True) from publish_error
