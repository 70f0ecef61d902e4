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

import math
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
TARGETS = {"e2e_rps": (">=", 0.9), "post_rps": (">=", 0.9), "p50": ("<=", 1.5)}


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


def _f(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, target = TARGETS[key]
    met = value >= target if op == ">=" else value <= target
    return f"{op} {target:g} {'met' if met else 'MISSED'}"


Row = tuple[str, str, str, str, str, str]


def _pair_row(label: str, part: dict[str, Any], key: str, digits: int = 0, ratio_key: str = "") -> Row:
    rounds = part["rounds"]
    per_round = [row["product"][key] / row["naive"][key] if row["naive"][key] else math.nan for row in rounds]
    headline = part["ratios"].get(ratio_key or key, sorted(per_round)[len(per_round) // 2])
    return (
        label,
        _f(part["naive"].get(key, math.nan), digits),
        _f(part["product"].get(key, math.nan), digits),
        _f(headline, 2),
        " ".join(_f(r, 2) for r in per_round),
        _verdict(key, headline),
    )


def rows(results: dict[str, Any]) -> list[Row]:
    """The printed table: medians over rounds per variant, and the median of the per-round ratios."""
    out: list[Row] = []
    if pairs := results.get("pairs"):
        sat, lat = pairs["saturation"], pairs["latency"]
        out.append(_pair_row("accepted POST/s", sat, "post_rps"))
        out.append(_pair_row("e2e orders/s, first order -> last invoice", sat, "e2e_rps"))
        out.append(_pair_row("sustained invoices/s, middle 60%", sat, "sustained_rps"))
        trip = sat["product"].get("round_trip_rps", math.nan)
        out.append(("round trip orders/s (answer applied)", "n/a", _f(trip), "", "", "product only"))
        for q in ("p50", "p95", "p99"):
            out.append(_pair_row(f"order->invoice {q} ms at {lat['rate']:.0f}/s", lat, q, 1))
        for group in ("api", "relays", "workers", "postgres"):
            out.append(_pair_row(f"CPU ms/order {group}", sat, f"cpu_ms_group_{group}", 2))
        out.append(_pair_row("CPU ms/order total", sat, "cpu_ms_total", 2))
        for group in ("api", "relays", "workers"):
            key = f"rss_mb_{group}"
            naive, product = sat["naive"].get(key, math.nan), sat["product"].get(key, math.nan)
            out.append((f"RSS MiB {group}", _f(naive), _f(product), "", "", ""))
    if drain := results.get("backlog"):
        out.append((f"backlog drain {drain['orders']:,} orders, s", "", _f(drain["wall_s"], 1), "", "", ""))
        out.append(("backlog invoices/s", "", _f(drain["invoices_per_s"]), "", "", "product only"))
    return out


HEADER = ("measure", "naive", "product", "ratio", "per round", "target")


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
