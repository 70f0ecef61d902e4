"""``make bench``: the product against the naive Flask+Celery baseline, paired round by round.

Prints a table and writes ``bench/results/e2e.json``. Knobs (environment): BENCH_QUICK=1 for a smoke
run; BENCH_ROUNDS, BENCH_CONCURRENCY, BENCH_SECONDS, BENCH_LATENCY_SECONDS, BENCH_RATE (0: half the
naive capacity), BENCH_SCENARIOS (comma list of pairs,profile,backlog; default pairs,profile: profile
is ``bench.spy``, py-spy over every product process, into ``bench/results/spy_*.txt``), and
BENCH_BACKLOG / BENCH_BACKLOG_RUNS for the product-only backlog drain; the tuning in
``bench.stack.Knobs``; BENCH_POSTGRES_URL (an admin URL: the bench creates and drops its own
databases) and BENCH_REDIS_URL.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import make_url

from bench.report import HEADER, rows, update_readme
from bench.scenarios import Plan, backlog_drain, paired_rounds
from bench.spy import spy_profile
from bench.stack import StackFactory
from bench.stats import format_table, write_results

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
LOGS = RESULTS / "e2e-logs"
"""Each process's output, kept after the run (ignored by git)."""
ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_PACKAGES = (
    "flask",
    "flask-sqlalchemy",
    "sqlalchemy",
    "psycopg",
    "celery",
    "kombu",
    "redis",
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


def machine() -> dict[str, Any]:
    """Core count, load and versions: what a reader needs to compare two result files."""
    conninfo = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    return {
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": postgres[0] if postgres else "?",
        "redis": redis_version,
        "packages": {name: version(name) for name in _PACKAGES},
        "nproc_available": len(os.sched_getaffinity(0)),
    }


def main() -> int:
    plan = Plan.from_env()
    scenarios = os.environ.get("BENCH_SCENARIOS", "pairs,profile").split(",")
    results: dict[str, Any] = {
        "source": source(),
        "machine": machine(),
        "plan": plan.as_dict(),
        "quick": bool(os.environ.get("BENCH_QUICK")),
        "started_at": time.time(),
    }
    shutil.rmtree(LOGS, ignore_errors=True)
    factory = StackFactory(POSTGRES_URL, REDIS_URL, LOGS)
    results["knobs"] = factory.knobs.__dict__
    try:
        if "pairs" in scenarios:
            results["pairs"] = paired_rounds(factory, plan)
        if "profile" in scenarios:
            results["profile"] = spy_profile(factory, seconds=3 if results["quick"] else 10)
        if "backlog" in scenarios:
            results["backlog"] = backlog_drain(factory, plan)
    finally:
        factory.close()
    results["load_average_after"] = os.getloadavg()
    results["seconds"] = time.time() - results["started_at"]
    dirty = " DIRTY TREE" if results["source"]["dirty"] else ""
    title = (
        f"make bench: product vs naive, {plan.rounds} paired rounds, {os.cpu_count()} cores, "
        f"load {results['machine']['load_average'][0]:.1f}, {results['source']['commit'][:8]}{dirty}"
    )
    table = format_table(rows(results), title=title, header=HEADER)
    print(table)
    out = RESULTS / ("e2e-quick.json" if results["quick"] else "e2e.json")  # a smoke run never overwrites
    write_results(out, {**results, "table": table.splitlines()})
    print(f"\nwritten to {out} in {results['seconds']:.0f} s")
    if not results["quick"] and "pairs" in results:
        update_readme(json.loads(out.read_text()))
        print("README.md: the performance figures rendered from it (bench.report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
