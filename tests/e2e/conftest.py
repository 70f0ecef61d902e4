"""End-to-end: the real API (gunicorn), relay and ``celery worker`` processes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.processes import (
    Service,
    api_service,
    free_port,
    relay_service,
    settings_env,
    wait_for_http,
    worker_service,
)
from shared.config import Settings


@dataclass
class Pipeline:
    base_url: str
    env: dict[str, str]
    api: Service
    relay: Service
    worker: Service
    log_dir: Path

    def services(self) -> list[Service]:
        return [self.api, self.relay, self.worker]

    def stop(self) -> None:
        for service in self.services():
            service.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.logs()[-3000:]}" for s in self.services())


def start_pipeline(settings: Settings, log_dir: Path) -> Pipeline:
    log_dir.mkdir(parents=True, exist_ok=True)
    env = settings_env(settings)
    port = free_port()
    pipeline = Pipeline(
        base_url=f"http://127.0.0.1:{port}",
        env=env,
        api=api_service(env, log_dir, port).start(),
        relay=relay_service(env, log_dir).start(),
        worker=worker_service(env, log_dir, settings.queue("invoices")).start(),
        log_dir=log_dir,
    )
    try:
        wait_for_http(f"{pipeline.base_url}/readyz", timeout=60)
        pipeline.worker.wait_for_log("ready", timeout=60)
    except BaseException:
        pipeline.stop()  # a pipeline that never came up must not outlive the test
        print(pipeline.logs())
        raise
    return pipeline


@pytest.fixture
def pipeline(pg_settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """The production shape on this test's own Postgres databases and Redis queue."""
    running = start_pipeline(pg_settings, tmp_path / "logs")
    yield running
    running.stop()
    print(running.logs())  # shown by pytest only when the test failed
