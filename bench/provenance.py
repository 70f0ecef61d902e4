"""Where and on what a benchmark ran: the commit (and whether the tree differed), cores, load, versions.

Every results file under ``bench/results`` carries both, so a reader can tell which commit its figures
describe and compare two files only where their machines compare.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import make_url

from bench.rabbitmq import rabbitmq_version

__all__ = ["machine", "source"]

ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = (
    "flask",
    "flask-sqlalchemy",
    "sqlalchemy",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "amqp",
    "gunicorn",
    "pydantic",
    "aiohttp",
)


def _git(*args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return completed.stdout.strip()


def source() -> dict[str, Any]:
    """The commit measured, and whether the tree differed from it (then the figures describe no commit)."""
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--", "."))}


def machine(postgres_url: str, broker_url: str) -> dict[str, Any]:
    """Core count, load and versions: what a reader needs to compare two result files.

    The broker's version under its name: ``redis`` for a ``redis://`` URL, else ``rabbitmq``."""
    conninfo = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        try:
            broker = {"redis": client.info("server")["redis_version"]}
        finally:
            client.close()
    else:
        broker = {"rabbitmq": rabbitmq_version(broker_url)}
    return {
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": postgres[0] if postgres else "?",
        **broker,
        "packages": {name: version(name) for name in _PACKAGES},
        "nproc_available": len(os.sched_getaffinity(0)),
    }
