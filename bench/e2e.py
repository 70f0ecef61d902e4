"""``make bench``: the outbox pipeline against its yardsticks, on real Postgres, Redis and processes.

Prints a table and writes ``bench/results/e2e.json``. Knobs (environment): BENCH_QUICK=1 for a smoke
run; BENCH_RUNS, BENCH_CONCURRENCY, BENCH_SECONDS, BENCH_RATE, BENCH_BACKLOG, BENCH_BACKLOG_RUNS,
BENCH_SCENARIOS (comma list of write,pipeline,backlog,profile); the tuning in ``bench.stack.Knobs``;
BENCH_POSTGRES_URL (an admin URL: the bench creates and drops its own databases) and BENCH_REDIS_URL.
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

from bench.scenarios import Plan, backlog_drain, pipeline, write_path
from bench.stack import StackFactory
from bench.stats import Row, format_table, write_results

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
LOGS = RESULTS / "logs"
"""Each process's output, kept after the run (ignored by git)."""
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_PACKAGES = ("flask", "sqlalchemy", "psycopg", "celery", "kombu", "redis", "gunicorn", "pydantic", "aiohttp")


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
    }


def profile(factory: StackFactory, count: int) -> dict[str, Any]:
    """5. Run ``bench.profile`` in a stack's environment (its own databases and queue)."""
    stack = factory.stack("profile")
    completed = subprocess.run(
        [sys.executable, "-m", "bench.profile", str(RESULTS), str(count)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.profile failed:\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _verdict(value: float, target: float, higher: bool = True) -> str:
    met = value >= target if higher else value <= target
    return f"target {'>=' if higher else '<='} {target:g}: {'met' if met else 'MISSED'}"


def _cpu(figures: dict[str, float]) -> str:
    parts = [
        f"{k.removeprefix('cpu_ms_')} {v:.1f}" for k, v in sorted(figures.items()) if k.startswith("cpu_ms_")
    ]
    return f"CPU ms/order: {', '.join(parts)}"


def rows(results: dict[str, Any]) -> list[Row]:
    """The printed table: medians of the runs, one line per figure."""
    out: list[Row] = []
    if write := results.get("write_path"):
        for name in ("outbox", "bare"):
            m = write[name]
            detail = f"p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms, errors {m['errors']:g}; {_cpu(m)}"
            out.append((f"1 write POST /orders/s ({name})", f"{m['rps']:.0f}", detail))
        out.append(("1 ratio outbox/bare", f"{write['ratio']:.2f}", _verdict(write["ratio"], 0.9)))
    if pipe := results.get("pipeline"):
        through, delay = pipe["throughput"], pipe["latency"]
        for name in ("outbox", "dual_write"):
            m = through[name]
            detail = f"API side {m['api_rps']:.0f}/s; {_cpu(m)}"
            out.append((f"2 e2e orders/s ({name})", f"{m['e2e_rps']:.0f}", detail))
        out.append(("2 ratio outbox/dual_write", f"{through['ratio']:.2f}", _verdict(through["ratio"], 0.8)))
        for name in ("outbox", "dual_write"):
            m = delay[name]
            detail = f"p95 {m['p95']:.1f} ms, p99 {m['p99']:.1f} ms at {m['sent_rps']:.0f}/s"
            out.append((f"3 order->invoice p50 ms ({name})", f"{m['p50']:.1f}", detail))
        p50 = delay["p50_ratio"]
        out.append(("3 p50 ratio outbox/dual_write", f"{p50:.2f}", _verdict(p50, 2.0, higher=False)))
    if drain := results.get("backlog"):
        parts = ", ".join(f"{drain[f'invoices_per_s_part{n}']:.0f}" for n in (1, 2, 3))
        out.append(
            (f"4 drain {drain['orders']:,} orders, s", f"{drain['wall_s']:.1f}", "relay+worker start to last")
        )
        out.append(("4 invoices/s", f"{drain['invoices_per_s']:.0f}", f"by third: {parts}"))
        out.append(("4 relay publish/s", f"{drain['relay_publish_per_s']:.0f}", "first publish to last"))
        for name in ("relay", "worker"):
            early, peak = drain[f"{name}_rss_early_mb"], drain[f"{name}_rss_peak_mb"]
            out.append((f"4 {name} RSS peak MiB", f"{peak:.0f}", f"{early:.0f} MiB at 10% drained"))
    if prof := results.get("profile"):
        for stage in ("api_request", "relay_batch", "worker_task"):
            packages = ", ".join(f"{p['name']} {p['share']:.0f}%" for p in prof[stage]["by_package"][:4])
            out.append((f"5 profile {stage}", f"{prof[stage]['total_seconds']:.2f} s", packages))
    return out


def main() -> int:
    plan = Plan.from_env()
    scenarios = os.environ.get("BENCH_SCENARIOS", "write,pipeline,backlog,profile").split(",")
    results: dict[str, Any] = {"machine": machine(), "plan": plan.as_dict(), "started_at": time.time()}
    shutil.rmtree(LOGS, ignore_errors=True)
    factory = StackFactory(POSTGRES_URL, REDIS_URL, LOGS)
    results["knobs"] = factory.knobs.__dict__
    try:
        if "write" in scenarios:
            results["write_path"] = write_path(factory, plan)
        if "pipeline" in scenarios:
            results["pipeline"] = pipeline(factory, plan)
        if "backlog" in scenarios:
            results["backlog"] = backlog_drain(factory, plan)
        if "profile" in scenarios:
            results["profile"] = profile(factory, count=300 if os.environ.get("BENCH_QUICK") else 1_000)
    finally:
        factory.close()
    results["load_average_after"] = os.getloadavg()
    results["seconds"] = time.time() - results["started_at"]
    table = format_table(
        rows(results), title=f"make bench ({os.cpu_count()} cores, medians of {plan.runs} runs)"
    )
    print(table)
    write_results(RESULTS / "e2e.json", {**results, "table": table.splitlines()})
    print(f"\nwritten to {RESULTS / 'e2e.json'} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
