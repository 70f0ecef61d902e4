"""The measured scenarios: the product against the naive baseline, paired round by round.

Both stacks stay up for the whole run; each round runs them one after the other (naive first in even
rounds, product first in odd ones, so a drift of the shared CPU hits both alike) with the same load
generator, and each ratio divides the product's figure by the naive one's of the *same* round.
The median of those per-round ratios is the headline, never a ratio of medians.

1. Saturation: ``concurrency`` clients POST as fast as answered for ``seconds``; then the run waits
   until every accepted order is invoiced (for the product: and its answer is back, order
   ``invoiced`` and outbox row acknowledged). Figures: accepted POST/s, end-to-end orders/s (first
   order written → last invoice written), a sustained invoices/s over the steady middle of that span,
   CPU ms per order by process (API, relays, workers, Postgres backends) and RSS.
2. Latency: an open loop at half the naive app's end-to-end capacity (median of the saturation
   rounds); order written → invoice written p50/p95/p99.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.backlog import fill_backlog
from bench.load import LoadResult, closed_loop, open_loop
from bench.measure import (
    InvoiceProbe,
    RoundTripProbe,
    cpu_by_pid,
    cpu_used,
    postgres_backends,
    publish_rate,
    rss_mb,
    settle,
    stages,
)
from bench.stack import API_KEY, Stack, StackFactory
from bench.stats import median_of, ratio, summarize

__all__ = ["GROUPS", "VARIANTS", "Plan", "Variant", "backlog_drain", "paired_rounds"]

VARIANTS = ("naive", "product")
GROUPS = {
    "api": "api",
    "relay": "relays",
    "invoice_relay": "relays",
    "worker": "workers",
    "consumer": "workers",
    "postgres": "postgres",
}
"""Each service's group in the CPU and RSS figures (the naive app has no relays)."""

SATURATION_RATIOS = ("post_rps", "e2e_rps", "sustained_rps", "cpu_ms_total")
LATENCY_RATIOS = ("p50", "p95", "p99")


def _env(name: str, quick: float, full: float) -> float:
    return float(os.environ.get(name, quick if os.environ.get("BENCH_QUICK") else full))


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``BENCH_QUICK=1`` shrinks everything for a smoke run."""

    rounds: int
    concurrency: int
    seconds: float
    latency_seconds: float
    rate: float
    backlog: int
    backlog_runs: int
    latency_fractions: tuple[float, ...] = (0.5, 0.25)
    """The steady loads of the latency rounds, as fractions of the naive capacity: "any steady load up
    to half" is shown at half and at a quarter (``BENCH_LATENCY_FRACTIONS``, a comma list)."""

    @classmethod
    def from_env(cls) -> Plan:
        return cls(
            rounds=int(_env("BENCH_ROUNDS", 3, 5)),
            concurrency=int(_env("BENCH_CONCURRENCY", 16, 16)),
            seconds=_env("BENCH_SECONDS", 3, 10),
            latency_seconds=_env("BENCH_LATENCY_SECONDS", 3, 10),
            rate=_env("BENCH_RATE", 0, 0),  # 0: half the naive app's measured capacity
            backlog=int(_env("BENCH_BACKLOG", 3_000, 100_000)),
            backlog_runs=int(_env("BENCH_BACKLOG_RUNS", 3, 3)),
            latency_fractions=tuple(
                float(f) for f in os.environ.get("BENCH_LATENCY_FRACTIONS", "0.5,0.25").split(",") if f
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Variant:
    """One stack under test and the probes that read what it did."""

    name: str
    stack: Stack
    invoices: InvoiceProbe = field(init=False)
    round_trip: RoundTripProbe | None = field(init=False)

    def __post_init__(self) -> None:
        self.invoices = InvoiceProbe(self.stack.databases.invoices_url)
        has_answer = "consumer" in self.stack.services
        self.round_trip = RoundTripProbe(self.stack.databases.orders_url) if has_answer else None

    def cpu(self) -> dict[str, dict[int, float]]:
        """CPU used so far by each process of the stack and by the Postgres backends serving it."""
        used = {name: cpu_by_pid(self.stack.processes(name)) for name in self.stack.services}
        databases = [self.stack.databases.orders_url, self.stack.databases.invoices_url]
        used["postgres"] = cpu_by_pid(postgres_backends(databases))
        return used

    def rss(self) -> dict[str, float]:
        by_group: dict[str, float] = {}
        for name in self.stack.services:
            group = GROUPS[name]
            by_group[group] = by_group.get(group, 0.0) + rss_mb(self.stack.processes(name))
        return {f"rss_mb_{group}": mb for group, mb in by_group.items()}

    def run(self, tag: str, send: Callable[[str, str], LoadResult]) -> tuple[LoadResult, dict[str, float]]:
        """Send one round's orders and wait until all are invoiced (and answered); its figures."""
        before = self.cpu()
        load = send(f"{self.stack.base_url}/orders", tag)
        rss = self.rss()  # at the end of the load: every process busy, queues at their longest
        timeout = 120 + load.placed / 50
        invoiced = self.invoices.wait_for(tag, load.placed, timeout)
        if invoiced != load.placed:
            raise RuntimeError(f"{self.name}: {load.placed} orders placed, {invoiced} invoiced")
        figures: dict[str, float] = {}
        delivery = self.invoices.delivery(tag)
        if self.round_trip is not None:
            answered = self.round_trip.wait_for(tag, load.placed, timeout)
            if answered != load.placed:
                raise RuntimeError(f"{self.name}: {load.placed} orders placed, {answered} answered")
            span = self.round_trip.last_acknowledged(tag) - delivery.first_placed
            figures["round_trip_rps"] = load.placed / span if span > 0 else 0.0
        cpu = _cpu_per_order(before, self.cpu(), load.placed)
        if load.errors:
            print(f"warning: {self.name} {tag}: failed requests {load.errors}", file=sys.stderr)
        databases = [self.stack.databases.orders_url, self.stack.databases.invoices_url]
        figures |= {
            "settle_s": settle(databases),  # after the CPU snapshot: the next variant starts on a calm server
            "placed": float(load.placed),
            "errors": float(sum(load.errors.values())),
            "e2e_rps": delivery.throughput,
            "sustained_rps": delivery.sustained(),
            **cpu,
            **rss,
        }
        return load, figures

    def close(self) -> None:
        self.invoices.close()
        if self.round_trip is not None:
            self.round_trip.close()


def _cpu_per_order(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], orders: int
) -> dict[str, float]:
    """Milliseconds of CPU per order, by service and by group: a cost the shared CPU's noise barely moves."""
    figures: dict[str, float] = {}
    for name, used in after.items():
        ms = 1000 * cpu_used(before.get(name, {}), used) / max(orders, 1)
        figures[f"cpu_ms_{name}"] = ms
        group = f"cpu_ms_group_{GROUPS[name]}"
        figures[group] = figures.get(group, 0.0) + ms
    for group in set(GROUPS.values()):
        figures.setdefault(f"cpu_ms_group_{group}", 0.0)
    figures["cpu_ms_total"] = sum(v for k, v in figures.items() if k.startswith("cpu_ms_group_"))
    return figures


def _paired(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    """The median over rounds of each per-round ratio product ÷ naive."""
    return {key: statistics.median(row["ratios"][key] for row in rows) for key in keys}


def _round_order(round_no: int) -> tuple[str, ...]:
    return VARIANTS if round_no % 2 == 0 else tuple(reversed(VARIANTS))


def paired_rounds(factory: StackFactory, plan: Plan) -> dict[str, Any]:
    """Both stacks up; saturation rounds, then latency rounds at each steady load (half the naive
    capacity, a quarter); paired ratios. ``latency`` is the first load's, ``latencies`` all of them."""
    started = time.monotonic()
    variants = {
        "naive": Variant("naive", factory.stack("naive", factory.naive_databases()).start_naive()),
        "product": Variant("product", factory.stack("product").start_product()),
    }
    print(f"stacks up in {time.monotonic() - started:.0f} s", file=sys.stderr)

    def saturate(url: str, tag: str) -> LoadResult:
        return closed_loop(url, API_KEY, tag, plan.concurrency, plan.seconds)

    saturation: list[dict[str, Any]] = []
    latencies: list[dict[str, Any]] = []
    try:
        for name, variant in variants.items():  # warm pools, imports and Celery's children, unrecorded
            variant.run(f"warm-{name}-", lambda url, tag: closed_loop(url, API_KEY, tag, 8, 1.0, 0.5))
        for round_no in range(plan.rounds):
            row: dict[str, Any] = {"round": round_no, "order": list(_round_order(round_no))}
            for name in row["order"]:
                load, figures = variants[name].run(f"s{round_no}{name}-", saturate)
                row[name] = {"post_rps": load.throughput, **figures}
            row["ratios"] = {k: ratio(row["product"][k], row["naive"][k]) for k in SATURATION_RATIOS}
            saturation.append(row)
            print(_progress("saturation", row, SATURATION_RATIOS), file=sys.stderr)
        capacity = statistics.median(row["naive"]["e2e_rps"] for row in saturation)
        fractions = (0.0,) if plan.rate else plan.latency_fractions
        for part_no, fraction in enumerate(fractions):
            rate = plan.rate or capacity * fraction
            latency = _latency_rounds(variants, plan, rate, f"l{part_no}")
            latencies.append(
                {
                    "rate": rate,
                    "fraction": fraction or rate / capacity,
                    "naive_capacity": capacity,
                    "ratios": _paired(latency, LATENCY_RATIOS),
                    **{name: median_of([row[name] for row in latency]) for name in VARIANTS},
                    "rounds": latency,
                }
            )
    finally:
        for variant in variants.values():
            variant.close()
            variant.stack.stop()
    return {
        "saturation": {
            "ratios": _paired(saturation, SATURATION_RATIOS),
            **{name: median_of([row[name] for row in saturation]) for name in VARIANTS},
            "rounds": saturation,
        },
        "latency": latencies[0],
        "latencies": latencies,
    }


def _latency_rounds(variants: dict[str, Variant], plan: Plan, rate: float, tag: str) -> list[dict[str, Any]]:
    """``plan.rounds`` paired rounds of an open loop at ``rate`` orders/s; each order's latency."""

    def steady(url: str, order_tag: str) -> LoadResult:
        return open_loop(url, API_KEY, order_tag, rate, plan.latency_seconds)

    latency: list[dict[str, Any]] = []
    for round_no in range(plan.rounds):
        row: dict[str, Any] = {"round": round_no, "order": list(_round_order(round_no))}
        for name in row["order"]:
            load, figures = variants[name].run(f"{tag}r{round_no}{name}-", steady)
            order_tag = f"{tag}r{round_no}{name}-"
            latencies = variants[name].invoices.delivery(order_tag).latencies_ms
            row[name] = {**summarize(latencies), "sent_rps": load.offered_rps, **figures}
            if name == "product":  # the naive app keeps no publish time
                databases = variants[name].stack.databases
                row[name] |= stages(databases.orders_url, databases.invoices_url, order_tag)
        row["ratios"] = {k: ratio(row["product"][k], row["naive"][k]) for k in LATENCY_RATIOS}
        latency.append(row)
        print(_progress(f"latency at {rate:.0f}/s", row, LATENCY_RATIOS), file=sys.stderr)
    return latency


def _progress(phase: str, row: dict[str, Any], keys: tuple[str, ...]) -> str:
    ratios = ", ".join(f"{k} {row['ratios'][k]:.2f}" for k in keys)
    product = row.get("product", {})
    if "to_published_p50" in product:
        ratios += (
            f" (product ms p50/p95: written→published {product['to_published_p50']:.1f}/"
            f"{product['to_published_p95']:.1f}, published→invoice {product['to_invoice_p50']:.1f}/"
            f"{product['to_invoice_p95']:.1f})"
        )
    return f"{phase} round {row['round']}: {ratios}"


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
    """Product only: ``plan.backlog`` orders piled up with no relay or worker, then drained: time, memory."""
    runs = [_drain_once(factory, plan.backlog) for _ in range(plan.backlog_runs)]
    return {**median_of(runs), "orders": plan.backlog, "runs": runs}
