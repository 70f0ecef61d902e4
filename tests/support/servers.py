"""Private servers for tests that stop, kill or restart them; the machine's shared ones are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from mirakuru import TCPExecutor

from harness.processes import free_port
from harness.waiting import wait_until


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    if not candidates:
        raise RuntimeError(f"{name} not found: install the PostgreSQL server binaries")
    return str(candidates[0])


def _as_postgres_user(command: list[str], directory: Path) -> list[str]:
    """Postgres refuses to run as root; on a root CI machine run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return command
    shutil.chown(directory, "postgres")
    for parent in directory.parents:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o711)
    return ["runuser", "-u", "postgres", "--", *command]


@dataclass
class PrivateRedis:
    """A ``redis-server`` on a free port of ``host`` (loopback by default) with its data in ``directory``.

    ``appendfsync always`` is opt-in: it is what compose runs (see docker-compose.yml).
    """

    directory: Path
    persistent: bool = False
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    _executor: TCPExecutor | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        # No password: protected mode would refuse every client not on loopback.
        exposed = [] if self.host == "127.0.0.1" else ["--protected-mode", "no"]
        command = [
            "redis-server", "--port", str(self.port), "--bind", self.host, "--save", "",
            "--dir", str(self.directory), *persistence, *exposed,
        ]  # fmt: skip
        self._executor = TCPExecutor(command, host=self.host, port=self.port, timeout=30)
        self._executor.start()
        return self

    def stop(self) -> None:
        if self._executor is not None and self._executor.running():
            self._executor.stop()

    def kill(self) -> None:
        """SIGKILL: whatever Redis held only in memory is gone."""
        if self._executor is not None and self._executor.running():
            self._executor.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class PrivatePostgres:
    """A throwaway Postgres cluster (initdb + pg_ctl) on a free port of ``host`` (loopback by default).

    Trust auth for loopback, and for the network ``trusted`` (CIDR) if given: clients on other hosts.
    """

    directory: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    trusted: str | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"

    def init(self) -> PrivatePostgres:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        result = subprocess.run(
            _as_postgres_user(command, self.directory),
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stdout}{result.stderr}")
        if self.trusted is not None:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.trusted} trust\n")
        return self

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -c listen_addresses={self.host} -k {self.directory} -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.directory / "log"), "-w", "start")
        wait_until(self._accepting, timeout=30, message="private postgres to accept connections")
        return self

    def _accepting(self) -> bool:
        try:
            with psycopg.connect(
                f"host={self.host} port={self.port} user=postgres dbname=postgres", connect_timeout=1
            ):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-m", mode, "-w", "stop")

    def _pg_ctl(self, *args: str) -> None:
        command = _as_postgres_user([_pg_bin("pg_ctl"), "-D", str(self.data), *args], self.directory)
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {result.stdout}{result.stderr}")

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()
