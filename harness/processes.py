"""Real processes for end-to-end tests: the same commands as compose and ``make run``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.waiting import wait_until
from shared.config import Settings

BIN = Path(sys.executable).parent
TEST_API_KEY = "osk_test_" + "k" * 40
"""The key every pipeline started by the tests accepts (``API_KEYS``); clients send it as a Bearer token."""
TEST_SIGNING_KEY = "test-signing-" + "s" * 20 + "0123456789"
"""The ``MESSAGE_SIGNING_KEY`` of every Redis pipeline the tests and benches start or build in process."""
TEST_SECRET_KEY = "test-secret-" + "x" * 32
"""Signs the pipeline page's sessions: required to serve outside the embedded mode."""
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pipeline_env(
    *,
    orders_url: str,
    invoices_url: str,
    broker_url: str,
    var_dir: Path,
    queue_prefix: str = "",
    **extra: str,
) -> dict[str, str]:
    """The environment of the fixed interface, as an operator would set it."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL") and k != "BROKER_URL"}
    env.update(
        ORDERS_DATABASE_URL=orders_url,
        INVOICES_DATABASE_URL=invoices_url,
        BROKER_URL=broker_url,
        VAR_DIR=str(var_dir),
        QUEUE_PREFIX=queue_prefix,
        LOG_FORMAT="json",
        RELAY_POLL_INTERVAL="0.5",
        PYTHONUNBUFFERED="1",
        API_KEYS=TEST_API_KEY,
        MESSAGE_SIGNING_KEY=TEST_SIGNING_KEY,
        SECRET_KEY=TEST_SECRET_KEY,
        RATE_LIMIT="100000 per minute",
        # Health/metrics on a free port each: pipelines of parallel tests (pytest -n) share this host.
        METRICS_PORT="0",
    )
    env.update(extra)
    return env


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """``pipeline_env`` for the databases, broker and queues that ``settings`` names."""
    return pipeline_env(
        orders_url=settings.orders_database_url,
        invoices_url=settings.invoices_database_url,
        broker_url=settings.broker_url,
        var_dir=settings.var_dir,
        queue_prefix=settings.queue_prefix,
        **extra,
    )


@dataclass
class Service:
    """One child process with its output in a log file, stopped by ``stop`` or ``kill``."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines of the log (those of one ``event``), read while the process may be writing:
        a last line not yet ended by its newline is left for the next read, and a line a killed
        process left unfinished (its restart appends after it) is not a record."""
        found = []
        for line in self.logs().rpartition("\n")[0].splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (event is None or record.get("event") == event):
                found.append(record)
        return found

    def wait_for_log(self, needle: str, timeout: float = 30) -> None:
        wait_until(
            lambda: needle in self.logs() or not self.running,
            timeout=timeout,
            message=f"{self.name} to log {needle!r}",
        )
        if not self.running:
            raise AssertionError(f"{self.name} exited early:\n{self.logs()[-4000:]}")

    def signal_group(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup runs, as in a crash."""
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.running:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


def api_service(env: dict[str, str], log_dir: Path, port: int, workers: int = 2, threads: int = 4) -> Service:
    command = [
        str(BIN / "gunicorn"), "-c", "python:order_service.gunicorn_conf", "order_service.wsgi:app",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--threads", str(threads),
    ]  # fmt: skip
    return Service("api", command, env, log_dir / "api.log")


def relay_service(env: dict[str, str], log_dir: Path, name: str = "relay") -> Service:
    return Service(name, [sys.executable, "-m", "order_service.relay"], env, log_dir / f"{name}.log")


def worker_service(
    env: dict[str, str], log_dir: Path, queue: str, concurrency: int = 2, name: str = "worker"
) -> Service:
    command = [
        str(BIN / "celery"), "-A", "invoice_worker", "worker", "-Q", queue, "--concurrency", str(concurrency),
        "--hostname", f"{name}-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    return Service(name, command, env, log_dir / f"{name}.log")


def invoice_relay_service(env: dict[str, str], log_dir: Path, name: str = "invoice-relay") -> Service:
    """``python -m invoice_worker.relay``: publishes ``invoice.created`` to the orders queue."""
    return Service(name, [sys.executable, "-m", "invoice_worker.relay"], env, log_dir / f"{name}.log")


def order_consumer_service(
    env: dict[str, str], log_dir: Path, queue: str, concurrency: int = 2, name: str = "order-consumer"
) -> Service:
    """``celery -A order_service.worker worker -Q <prefix>orders``: applies ``invoice.created`` to orders."""
    command = [
        str(BIN / "celery"), "-A", "order_service.worker", "worker", "-Q", queue,
        "--concurrency", str(concurrency), "--hostname", f"{name}-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    return Service(name, command, env, log_dir / f"{name}.log")


def wait_for_http(url: str, timeout: float = 30) -> None:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(ready, timeout=timeout, interval=0.2, message=f"{url} to answer 200")


def run_migrations(env: dict[str, str]) -> None:
    """``make migrate``'s two commands, as a subprocess with the given environment."""
    for command in (
        [str(BIN / "flask"), "--app", "order_service", "db", "upgrade"],
        [sys.executable, "-m", "invoice_worker", "migrate"],
    ):
        subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)


def elapsed(start: float) -> float:
    return time.monotonic() - start
