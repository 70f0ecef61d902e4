"""Prometheus in forking servers: one metrics folder per process group, shared by every forked child.

prometheus-client counts in process memory; gunicorn's workers and Celery's prefork pool are
separate processes, so each writes its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``
and a scrape sums the folder (``MultiProcessCollector``). The variable must be set before the
first metric exists, so the entry points (``order_service.wsgi``, the Celery ``-A`` modules) call
``enable_multiprocess`` first thing.

The folder: ``PROMETHEUS_MULTIPROC_DIR`` if the operator set it (then it is theirs to empty between
runs, e.g. a tmpfs), else ``<tmp>/prometheus-<service>-<pgid>-<leader start time>``. A gunicorn
master and its workers, or a Celery worker and its pool, share a process group, hence one folder;
another server on the host has its own group. Folders whose process group is gone are deleted
when the next one is made, so restarts leave nothing behind; a pid reused by a later group gets a
fresh folder (the start time differs), never the old counts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from flask_outbox.health import HealthServer, serve_wsgi

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROC_ENV",
    "enable_multiprocess",
    "exposition",
    "multiprocess_dir",
    "process_dead",
    "serve_metrics",
]

log = structlog.get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FOLDER = re.compile(r"^prometheus-(?P<service>[a-z0-9-]+?)-(?P<pgid>\d+)-(?P<start>\d+)$")


def multiprocess_dir() -> Path | None:
    """The folder this process's metrics live in, or ``None`` (plain in-process metrics)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: Path, service: str) -> None:
    for folder in root.glob(f"prometheus-{service}-*"):
        match = _FOLDER.match(folder.name)
        if match is None or match["service"] != service:
            continue
        pgid = int(match["pgid"])
        if not _group_alive(pgid) or _start_time(pgid) not in (match["start"], "0"):
            shutil.rmtree(folder, ignore_errors=True)


def enable_multiprocess(service: str) -> Path:
    """Point prometheus-client at this process group's folder; call before any metric is created.

    Idempotent within a process; forked children inherit the variable and so the folder.
    """
    current = multiprocess_dir()
    if current is None:
        root = Path(tempfile.gettempdir())
        pgid = os.getpgrp()
        with contextlib.suppress(OSError):
            _remove_stale(root, service)
        current = root / f"prometheus-{service}-{pgid}-{_start_time(pgid)}"
        os.environ[MULTIPROC_ENV] = str(current)
    current.mkdir(parents=True, exist_ok=True)
    # prometheus-client chose its value class when it was imported; choose again now the variable is set.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return current


def process_dead(pid: int) -> None:
    """Drop a finished child's live gauges (its counters and histograms stay: totals never go back)."""
    folder = multiprocess_dir()
    if folder is not None:
        mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """Prometheus text for a scrape: every process of the group (multiprocess mode), else ``registry``.

    In multiprocess mode the folder holds every metric made since it was enabled, ``registry``'s too.
    """
    folder = multiprocess_dir()
    if folder is None:
        return generate_latest(registry or REGISTRY)
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(folder))  # type: ignore[no-untyped-call]
    return generate_latest(merged)


def serve_metrics(port: int, host: str = "0.0.0.0") -> HealthServer:  # noqa: S104 - a container's own port
    """``/metrics`` of this process group on its own port, from a daemon thread (port 0: a free one).

    For a server whose public port must not expose them: a gunicorn master calls it once ready, and
    sums its workers' folder on every scrape.
    """

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics only"]
        body = exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    return serve_wsgi(app, host, port)
