"""The four measured scenarios; each returns the median of its runs plus the raw runs."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.backlog import fill_backlog
from bench.load import LoadResult, closed_loop, open_loop
from bench.measure import InvoiceProbe, cpu_by_pid, cpu_used, postgres_backends, publish_rate, rss_mb
from bench.stack import API_KEY, Stack, StackFactory
from bench.stats import median_of, ratio, summarize

__all__ = ["Plan", "backlog_drain", "pipeline", "write_path"]

REAL_APP = "order_service.wsgi:app"


def _env(name: str, quick: float, full: float) -> float:
    return float(os.environ.get(name, quick if os.environ.get("BENCH_QUICK") else full))


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``BENCH_QUICK=1`` shrinks everything for a smoke run."""

    runs: int
    concurrency: int
    seconds: float
    rate: float
    backlog: int
    backlog_runs: int

    @classmethod
    def from_env(cls) -> Plan:
        return cls(
            runs=int(_env("BENCH_RUNS", 3, 3)),
            concurrency=int(_env("BENCH_CONCURRENCY", 16, 16)),
            seconds=_env("BENCH_SECONDS", 3, 10),
            rate=_env("BENCH_RATE", 100, 100),
            backlog=int(_env("BENCH_BACKLOG", 3_000, 100_000)),
            backlog_runs=int(_env("BENCH_BACKLOG_RUNS", 3, 3)),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_figures(load: LoadResult, label: str) -> dict[str, float]:
    if load.errors:
        print(f"warning: {label}: failed requests {load.errors}", file=sys.stderr)
    errors = float(sum(load.errors.values()))
    return {"rps": load.throughput, **summarize(load.latencies_ms), "errors": errors}


def write_path(factory: StackFactory, plan: Plan) -> dict[str, Any]:
    """1. POST /orders at a fixed concurrency: the real service vs the same without the outbox receiver."""
    stacks = {
        "outbox": factory.stack("write-outbox").start_api(REAL_APP),
        "bare": factory.stack("write-bare").start_api("bench.apps:bare"),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
    try:
        for run in range(plan.runs):
            for name, stack in stacks.items():  # interleaved, so drift in the shared CPU hits both alike
                before = _cpu(stack)
                load = closed_loop(
                    f"{stack.base_url}/orders", API_KEY, f"w{run}{name}-", plan.concurrency, plan.seconds
                )
                cpu = _cpu_per_order(before, _cpu(stack), load.placed)
                runs[name].append({**_load_figures(load, f"write {name}"), **cpu})
    finally:
        for stack in stacks.values():
            stack.stop()
    medians = {name: median_of(r) for name, r in runs.items()}
    return {
        **medians,
        "ratio": ratio(medians["outbox"]["rps"], medians["bare"]["rps"]),
        "runs": runs,
    }


def _cpu(stack: Stack) -> dict[str, dict[int, float]]:
    """CPU used so far by each of the stack's processes and by the Postgres backends serving it."""
    used = {name: cpu_by_pid(stack.processes(name)) for name in stack.services}
    databases = [stack.databases.orders_url, stack.databases.invoices_url]
    used["postgres"] = cpu_by_pid(postgres_backends(databases))
    return used


def _cpu_per_order(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], orders: int
) -> dict[str, float]:
    """Milliseconds of CPU per order in each process: a cost the shared CPU's noise barely moves."""
    return {
        f"cpu_ms_{name}": 1000 * cpu_used(before.get(name, {}), used) / max(orders, 1)
        for name, used in after.items()
    }


def _deliver(stack: Stack, probe: InvoiceProbe, tag: str, send: Any) -> tuple[LoadResult, dict[str, float]]:
    """Send one run's orders, wait until all are invoiced, return the load and the CPU per order."""
    before = _cpu(stack)
    load: LoadResult = send(f"{stack.base_url}/orders", tag)
    invoiced = probe.wait_for(tag, load.placed, timeout=120 + load.placed / 50)
    if invoiced != load.placed:
        raise RuntimeError(
            f"{stack.name}: {load.placed} orders placed, {invoiced} invoiced ({stack.log_dir})"
        )
    return load, _cpu_per_order(before, _cpu(stack), load.placed)


def pipeline(factory: StackFactory, plan: Plan) -> dict[str, Any]:
    """2. sustained HTTP-in → invoice orders/s and 3. commit → invoice latency: outbox vs dual write."""
    stacks = {
        "outbox": factory.stack("pipe-outbox").start_api(REAL_APP).start_relay().start_worker(),
        "dual_write": factory.stack("pipe-dual").start_api("bench.apps:dual_write").start_worker(),
    }
    probes = {name: InvoiceProbe(stack.databases.invoices_url) for name, stack in stacks.items()}
    throughput: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
    latency: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}

    def saturate(url: str, tag: str) -> LoadResult:
        return closed_loop(url, API_KEY, tag, plan.concurrency, plan.seconds)

    try:
        for run in range(plan.runs):
            for name, stack in stacks.items():
                load, cpu = _deliver(stack, probes[name], f"t{run}{name}-", saturate)
                delivery = probes[name].delivery(f"t{run}{name}-")
                throughput[name].append({"e2e_rps": delivery.throughput, "api_rps": load.throughput, **cpu})
        # "Moderate" means well below saturation: the plan's rate, capped at half the slower variant's
        # sustained rate, or queueing (not the pipeline) would set the latency on a small machine.
        capacity = min(median_of(r)["e2e_rps"] for r in throughput.values())
        rate = min(plan.rate, capacity / 2)

        def steady(url: str, tag: str) -> LoadResult:
            return open_loop(url, API_KEY, tag, rate, plan.seconds)

        for run in range(plan.runs):
            for name, stack in stacks.items():
                load, cpu = _deliver(stack, probes[name], f"l{run}{name}-", steady)
                delivery = probes[name].delivery(f"l{run}{name}-")
                latency[name].append(
                    {**summarize(delivery.latencies_ms), "sent_rps": load.offered_rps, **cpu}
                )
    finally:
        for probe in probes.values():
            probe.close()
        for stack in stacks.values():
            stack.stop()
    sustained = {name: median_of(r) for name, r in throughput.items()}
    delays = {name: median_of(r) for name, r in latency.items()}
    return {
        "throughput": {
            **sustained,
            "ratio": ratio(sustained["outbox"]["e2e_rps"], sustained["dual_write"]["e2e_rps"]),
            "runs": throughput,
        },
        "latency": {
            **delays,
            "p50_ratio": ratio(delays["outbox"]["p50"], delays["dual_write"]["p50"]),
            "runs": latency,
        },
    }


def _memory_profile(samples: list[tuple[int, dict[str, float]]], size: int) -> dict[str, float]:
    """RSS once a tenth of the backlog is done (warm, but early) and at its peak, per process tree."""
    early = next((rss for done, rss in samples if done >= size // 10), samples[-1][1] if samples else {})
    figures: dict[str, float] = {}
    for name in ("relay", "worker"):
        figures[f"{name}_rss_early_mb"] = early.get(name, 0.0)
        figures[f"{name}_rss_peak_mb"] = max((rss.get(name, 0.0) for _, rss in samples), default=0.0)
    return figures


def _drain_once(factory: StackFactory, size: int) -> dict[str, float]:
    databases = factory.databases()
    fill_backlog(databases.orders_url, size, "bl-")
    stack = factory.stack("backlog", databases)
    probe = InvoiceProbe(databases.invoices_url)
    samples: list[tuple[int, dict[str, float]]] = []
    try:
        started = time.monotonic()
        stack.start_relay().start_worker()
        deadline = started + 120 + size / 20
        done = 0
        while done < size and time.monotonic() < deadline:
            time.sleep(0.5)
            done = probe.count("bl-")
            samples.append((done, {name: rss_mb(stack.processes(name)) for name in ("relay", "worker")}))
        elapsed = time.monotonic() - started
        if done < size:
            raise RuntimeError(f"backlog: {done} of {size} invoiced before the deadline ({stack.log_dir})")
        delivery = probe.delivery("bl-")
    finally:
        probe.close()
        stack.stop()
    thirds = delivery.rates_by_part(3)
    return {
        "wall_s": elapsed,
        "invoices_per_s": statistics.median(thirds),
        **{f"invoices_per_s_part{n + 1}": rate for n, rate in enumerate(thirds)},
        "relay_publish_per_s": publish_rate(databases.orders_url),
        **_memory_profile(samples, size),
    }


def backlog_drain(factory: StackFactory, plan: Plan) -> dict[str, Any]:
    """4. Workers stopped while ``plan.backlog`` orders pile up, then started: time to drain, memory."""
    runs = [_drain_once(factory, plan.backlog) for _ in range(plan.backlog_runs)]
    return {**median_of(runs), "orders": plan.backlog, "runs": runs}
