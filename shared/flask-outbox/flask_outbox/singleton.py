"""One relay per SQLite database: an exclusive ``flock`` that the kernel drops when the process dies.

The lock file sits next to the database (``<database>.relay.lock``) and holds the relay's pid, so
``relay status`` can tell whether the embedded relay runs (``lock_holder``) without a database lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

__all__ = ["ACQUIRE_PATIENCE_S", "RelayAlreadyRunning", "SingleRelayLock", "lock_holder", "lock_path"]

ACQUIRE_PATIENCE_S = 0.5
"""How long ``acquire`` retries a taken lock: ``lock_holder`` holds it for microseconds, a relay for good."""


class RelayAlreadyRunning(RuntimeError):
    """Another relay holds the lock: SQLite has no row locks to share the outbox safely."""


def lock_path(database: str) -> Path:
    """The lock file of the SQLite database file ``database``."""
    return Path(f"{database}.relay.lock")


def _try_lock(handle: IO[str], kind: int) -> bool:
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SingleRelayLock:
    """Held for the life of the relay; a second relay fails to take it and must exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> SingleRelayLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        deadline = time.monotonic() + ACQUIRE_PATIENCE_S
        while not _try_lock(handle, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise RelayAlreadyRunning(
                    f"another relay (pid {holder}) already runs on this SQLite database (lock {self.path}); "
                    "embedded mode runs exactly one relay"
                )
            time.sleep(0.05)
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def lock_holder(path: Path) -> int | None:
    """The pid of the relay holding the lock at ``path`` (0 if it has not written it yet); None if none does.

    Probes with a shared lock, released at once: a relay starting in that instant waits for it
    (``ACQUIRE_PATIENCE_S``) instead of taking the probe for a second relay.
    """
    try:
        handle = path.open("r")
    except FileNotFoundError:
        return None
    with handle:
        if _try_lock(handle, fcntl.LOCK_SH):
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
        written = handle.read().strip()
        return int(written) if written.isdigit() else 0
