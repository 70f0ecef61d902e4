"""``make bench``: the product against the naive Flask+Celery baseline, paired round by round.

Prints a table and writes ``bench/results/e2e.json``. Knobs (environment): BENCH_QUICK=1 for a smoke
run; BENCH_ROUNDS, BENCH_CONCURRENCY, BENCH_SECONDS, BENCH_LATENCY_SECONDS, BENCH_RATE (0: half the
naive capacity), BENCH_SCENARIOS (comma list of pairs,profile,backlog; default pairs,profile: profile
is ``bench.spy``, py-spy over every product process, into ``bench/results/spy_*.txt``), and
BENCH_BACKLOG / BENCH_BACKLOG_RUNS for the product-only backlog drain; the tuning in
``bench.stack.Knobs``; BENCH_POSTGRES_URL (an admin URL: the bench creates and drops its own
databases) and BENCH_REDIS_URL.

BENCH_BROKER=rabbitmq (``make bench BROKER=rabbitmq``): both stacks on the local RabbitMQ instead, on a
vhost and user the bench makes and deletes (``bench.rabbitmq``); written to ``e2e-rabbitmq.json``
(profiles to ``spy-rabbitmq_*.txt``) and rendered into its own block of docs/performance.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.provenance import machine, source
from bench.rabbitmq import bench_broker, queue_types
from bench.report import (
    HEADER,
    PERFORMANCE,
    RABBIT_END,
    RABBIT_START,
    render_markdown,
    replace_block,
    rows,
    update_docs,
)
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


def main() -> int:
    broker = os.environ.get("BENCH_BROKER", "redis")
    with bench_broker(broker, REDIS_URL) as broker_url:
        return run(broker, broker_url)


def run(broker: str, broker_url: str) -> int:
    plan = Plan.from_env()
    scenarios = os.environ.get("BENCH_SCENARIOS", "pairs,profile").split(",")
    quick = bool(os.environ.get("BENCH_QUICK"))
    results: dict[str, Any] = {
        "source": source(),
        "machine": machine(POSTGRES_URL, broker_url),
        "broker": broker,
        "plan": plan.as_dict(),
        "quick": quick,
        "started_at": time.time(),
    }
    shutil.rmtree(LOGS, ignore_errors=True)
    factory = StackFactory(POSTGRES_URL, broker_url, LOGS)
    results["knobs"] = factory.knobs.__dict__
    try:
        if "pairs" in scenarios:
            results["pairs"] = paired_rounds(factory, plan)
        if "profile" in scenarios:
            # A smoke run's profiles go with its logs: the committed spy files stay those of a full run.
            spies = (LOGS, "spy_") if quick else (RESULTS, "spy_" if broker == "redis" else f"spy-{broker}_")
            results["profile"] = spy_profile(factory, 3 if quick else 10, *spies)
        if "backlog" in scenarios:
            results["backlog"] = backlog_drain(factory, plan)
        if broker == "rabbitmq":  # the product's quorum queues, the naive app's classic one
            results["queues"] = queue_types(broker_url)
    finally:
        factory.close()
    results["load_average_after"] = os.getloadavg()
    results["seconds"] = time.time() - results["started_at"]
    dirty = " DIRTY TREE" if results["source"]["dirty"] else ""
    title = (
        f"make bench: product vs naive on {broker}, {plan.rounds} paired rounds, {os.cpu_count()} cores, "
        f"load {results['machine']['load_average'][0]:.1f}, {results['source']['commit'][:8]}{dirty}"
    )
    table = format_table(rows(results), title=title, header=HEADER)
    print(table)
    name = "e2e" if broker == "redis" else f"e2e-{broker}"
    out = RESULTS / f"{name}{'-quick' if quick else ''}.json"  # a smoke run never overwrites
    write_results(out, {**results, "table": table.splitlines()})
    print(f"\nwritten to {out} in {results['seconds']:.0f} s")
    if not quick and "pairs" in results:
        written = json.loads(out.read_text())
        if broker == "redis":
            update_docs(written)
        else:
            replace_block(PERFORMANCE, RABBIT_START, RABBIT_END, render_markdown(written))
        print("docs/performance.md: the performance figures rendered from it (bench.report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
