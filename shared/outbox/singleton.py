"""One relay per SQLite database: an exclusive ``flock`` that the kernel drops when the process dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

__all__ = ["RelayAlreadyRunning", "SingleRelayLock"]


class RelayAlreadyRunning(RuntimeError):
    """Another relay holds the lock: SQLite has no row locks to share the outbox safely."""


class SingleRelayLock:
    """Held for the life of the relay; a second relay fails to take it and must exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> SingleRelayLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RelayAlreadyRunning(
                f"another relay (pid {holder}) already runs on this SQLite database (lock {self.path}); "
                "embedded mode runs exactly one relay"
            ) from None
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
