"""How an idle relay waits: Postgres LISTEN/NOTIFY with a polling fallback, or plain polling."""

from __future__ import annotations

import threading
import time
from typing import Protocol

import psycopg
import structlog
from sqlalchemy import Engine

from flask_outbox.db import is_postgres, keepalive_connect_args
from flask_outbox.table import NOTIFY_CHANNEL

__all__ = ["NotifyWaiter", "PollingWaiter", "Waiter", "waiter_for"]

log = structlog.get_logger(__name__)

_SLICE = 0.25


class Waiter(Protocol):
    def wait(self) -> None: ...

    def close(self) -> None: ...


class PollingWaiter:
    """Sleeps for the poll interval, waking early on shutdown."""

    def __init__(self, stop: threading.Event, interval: float) -> None:
        self._stop = stop
        self._interval = interval

    def wait(self) -> None:
        self._stop.wait(self._interval)

    def close(self) -> None:
        """Nothing to release."""


class NotifyWaiter:
    """Returns as soon as a transaction that wrote outbox rows commits, or after the poll interval.

    The interval is the fallback for notifications lost while the listening connection was down.
    TCP keepalives drop a connection to a vanished server within ~``keepalive_bound`` seconds, so
    the listener reconnects instead of waiting on a dead socket for the kernel default (~2 h).
    """

    def __init__(
        self, conninfo: str, stop: threading.Event, interval: float, keepalive_bound: float = 30.0
    ) -> None:
        self._conninfo = conninfo
        self._stop = stop
        self._interval = interval
        self._connect_args = keepalive_connect_args(keepalive_bound)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def _listen(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, **{**self._connect_args, "connect_timeout": 5}
            )
            self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._conn

    def wait(self) -> None:
        """Return at the next commit that wrote outbox rows, or after the interval.

        A connection that only now starts listening returns at once: notifications sent before its
        LISTEN (a commit between the relay's last claim and this call, or during a reconnect) are lost,
        so the relay claims once more before it waits.
        """
        try:
            listening = self._conn is not None and not self._conn.closed
            conn = self._listen()
            if not listening:
                return
            deadline = time.monotonic() + self._interval
            # Short slices so a stop request (SIGTERM) is seen promptly, not after the whole interval.
            while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if any(True for _ in conn.notifies(timeout=min(left, _SLICE), stop_after=1)):
                    break
            # Coalesce the burst: one wake-up drains everything that is due.
            for _ in conn.notifies(timeout=0):
                pass
        except psycopg.Error as exc:
            log.warning("relay.listen_failed", error=str(exc))
            self.close()
            self._stop.wait(self._interval)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def waiter_for(engine: Engine, stop: threading.Event, interval: float) -> Waiter:
    if is_postgres(engine):
        url = engine.url.set(drivername="postgresql")
        return NotifyWaiter(url.render_as_string(hide_password=False), stop, interval)
    return PollingWaiter(stop, interval)
