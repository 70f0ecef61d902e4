"""The bench's figures, from the committed results files: printed by ``make bench`` and written into docs/.

Every figure the documentation quotes is rendered from a results file, with the commit it was measured at:

- ``docs/performance.md``, block ``START``/``END``: ``bench/results/e2e.json`` (``make bench`` renders it
  after writing the file);
- ``docs/performance.md``, block ``RELAY_START``/``RELAY_END``: ``bench/results/relay.json`` and
  ``relay_backlogs.json`` (``make bench-relay``);
- ``docs/performance.md``, blocks ``RABBIT_START``/``RABBIT_END`` and ``RABBIT_RELAY_START``/
  ``RABBIT_RELAY_END``: ``bench/results/e2e-rabbitmq.json`` (``make bench BROKER=rabbitmq``, which renders
  it) and ``relay-rabbitmq.json`` (``make bench-relay BROKER=rabbitmq``, likewise); while a file is absent
  its block says "not measured yet" (``render_pending``);
- ``docs/faults.md``, block ``SOAK_START``/``SOAK_END``: ``bench/results/chaos-10000.txt``
  (``make chaos N=10000``);
- ``docs/faults.md``, block ``LONG_START``/``LONG_END``: ``bench/results/faults-long.txt``
  (``make faults-long``).

``python -m bench.report`` renders them all again from the files; ``tests/unit/test_bench_report.py`` fails
when a block and its committed file disagree.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.scenarios import VARIANTS

__all__ = [
    "HEADER",
    "PERFORMANCE",
    "TARGETS",
    "rabbitmq_blocks",
    "render_long",
    "render_markdown",
    "render_pending",
    "render_relay",
    "render_relay_rabbitmq",
    "render_soak",
    "replace_block",
    "rows",
    "update_docs",
]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PERFORMANCE = DOCS / "performance.md"
FAULTS = DOCS / "faults.md"
RESULTS_DIR = ROOT / "bench" / "results"
RESULTS = RESULTS_DIR / "e2e.json"
RELAY_RESULTS = RESULTS_DIR / "relay.json"
BACKLOG_RESULTS = RESULTS_DIR / "relay_backlogs.json"
RABBIT_RESULTS = RESULTS_DIR / "e2e-rabbitmq.json"
RABBIT_RELAY_RESULTS = RESULTS_DIR / "relay-rabbitmq.json"
SOAK_RESULTS = RESULTS_DIR / "chaos-10000.txt"
LONG_RESULTS = RESULTS_DIR / "faults-long.txt"
START = "<!-- figures: rendered by bench/report.py from bench/results/e2e.json; do not edit -->"
END = "<!-- end of figures -->"
RELAY_START = (
    "<!-- relay figures: rendered by bench/report.py from bench/results/relay.json and "
    "relay_backlogs.json; do not edit -->"
)
RELAY_END = "<!-- end of relay figures -->"
RABBIT_START = (
    "<!-- RabbitMQ figures: rendered by bench/report.py from bench/results/e2e-rabbitmq.json; do not edit -->"
)
RABBIT_END = "<!-- end of RabbitMQ figures -->"
RABBIT_RELAY_START = (
    "<!-- RabbitMQ relay figures: rendered by bench/report.py from bench/results/relay-rabbitmq.json; "
    "do not edit -->"
)
RABBIT_RELAY_END = "<!-- end of RabbitMQ relay figures -->"
SOAK_START = (
    "<!-- soak figures: rendered by bench/report.py from bench/results/chaos-10000.txt; do not edit -->"
)
SOAK_END = "<!-- end of soak figures -->"
LONG_START = (
    "<!-- long fault figures: rendered by bench/report.py from bench/results/faults-long.txt; do not edit -->"
)
LONG_END = "<!-- end of long fault figures -->"
TIMES, DASH = "\u00d7", "\u2013"  # the prose's multiplication sign and range dash
TARGETS = {"e2e_rps": (">=", 0.9), "post_rps": (">=", 0.9), "p50": ("<=", 1.5)}
EVERY_ROUND_TARGETS = {**TARGETS, "p95": ("<=", 2.0), "p99": ("<=", 2.0)}
"""The bars of a results file that has ``latencies`` (one part per steady load): p95 and p99 too, and
each met in every round, not only by the median. An older file renders with ``TARGETS`` as it did."""
HEADER = ("measure", "naive", "product", "ratio", "per round", "target")
_PROCESSES = ("api", "relay", "invoice_relay", "worker", "consumer", "postgres")

Row = tuple[str, str, str, str, str, str]


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _meets(op: str, value: float, target: float) -> bool:
    return value >= target if op == ">=" else value <= target


def _verdict(key: str, value: float, per_round: list[float] | None = None) -> str:
    """``per_round`` given: the bar must hold in every round ("met in every round", or which missed)."""
    targets = TARGETS if per_round is None else EVERY_ROUND_TARGETS
    if key not in targets:
        return ""
    op, target = targets[key]
    if per_round is None:
        return f"{op} {target:g} {'met' if _meets(op, value, target) else 'MISSED'}"
    missed = [str(n) for n, r in enumerate(per_round) if not _meets(op, r, target)]
    if not missed:
        return f"{op} {target:g} met in every round"
    return f"{op} {target:g} MISSED in round {','.join(missed)}"


def _pair_row(
    label: str,
    part: dict[str, Any],
    key: str,
    digits: int = 0,
    ratio_key: str = "",
    every_round: bool = False,
) -> Row:
    rounds = part["rounds"]
    per_round = [row["product"][key] / row["naive"][key] if row["naive"][key] else math.nan for row in rounds]
    headline = part["ratios"].get(ratio_key or key, sorted(per_round)[len(per_round) // 2])
    return (
        label,
        _f(part["naive"].get(key, math.nan), digits),
        _f(part["product"].get(key, math.nan), digits),
        _f(headline, 2),
        " ".join(_f(r, 2) for r in per_round),
        _verdict(key, headline, per_round if every_round else None),
    )


STAGES = (("to_published", "written -> published"), ("to_invoice", "published -> invoice"))
"""The product's order->invoice in two stages (``bench.measure.stages``): relay, then broker and worker."""


def rows(results: dict[str, Any]) -> list[Row]:
    """The table: medians over rounds per variant, and the median of the per-round ratios."""
    out: list[Row] = []
    if pairs := results.get("pairs"):
        sat = pairs["saturation"]
        every = "latencies" in pairs  # the bars in every round (a file from before: as it rendered then)
        out.append(_pair_row("accepted POST/s", sat, "post_rps", every_round=every))
        out.append(_pair_row("e2e orders/s, first order -> last invoice", sat, "e2e_rps", every_round=every))
        out.append(_pair_row("sustained invoices/s, middle 60%", sat, "sustained_rps"))
        trip = sat["product"].get("round_trip_rps", math.nan)
        out.append(("round trip orders/s (answer applied)", "n/a", _f(trip), "", "", "product only"))
        for lat in pairs.get("latencies", [pairs["latency"]]):
            share = f" ({lat['fraction']:.2g} naive)" if "fraction" in lat else ""
            for q in ("p50", "p95", "p99"):
                label = f"order->invoice {q} ms at {lat['rate']:.0f}/s{share}"
                out.append(_pair_row(label, lat, q, 1, every_round=every))
            for stage, name in STAGES:
                if f"{stage}_p50" in lat["product"]:  # results from before the stages have none
                    figures = "/".join(_f(lat["product"][f"{stage}_{q}"], 1) for q in ("p50", "p95", "p99"))
                    label = f"  of which {name}, p50/p95/p99 ms at {lat['rate']:.0f}/s"
                    out.append((label, "n/a", figures, "", "", "product only"))
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


def _loads(plan: dict[str, Any]) -> str:
    """The latency rounds' steady loads as words: "half and a quarter" (older results: half only)."""
    names = {0.5: "half", 0.25: "a quarter"}
    fractions = plan.get("latency_fractions") or [0.5]
    return " and ".join(names.get(float(f), f"{float(f):g}") for f in fractions)


def render_markdown(results: dict[str, Any]) -> str:
    """The end-to-end figures block: where and when they were measured, the table, CPU by process.

    A RabbitMQ run (``"broker": "rabbitmq"``) renders into its own block, after a paragraph saying what
    differs; a file without ``broker`` is a Redis run and renders as it always did."""
    source, machine, plan = results["source"], results["machine"], results["plan"]
    tree = "a DIRTY tree (the figures describe no commit)" if source["dirty"] else "a clean tree"
    load_before, load_after = machine["load_average"][0], results["load_average_after"][0]
    rabbitmq = results.get("broker", "redis") == "rabbitmq"
    lines = [START, f"Measured by `make bench` at commit `{source['commit'][:7]}` on {tree}: "]
    if rabbitmq:
        lines = [
            RABBIT_START,
            f"**On RabbitMQ** {machine['rabbitmq']} (a vhost and user of the bench's own): the same paired "
            "rounds with both stacks on the broker. The product on durable quorum queues, its relays waiting "
            "for the broker's confirms once per batch; the naive app as Celery's defaults make it, a "
            "classic queue and no publisher confirms (`.delay()` returns once the message is on the socket). "
            "No Redis: the product's rate-limit counters live in each process.",
            "",
            f"Measured by `make bench BROKER=rabbitmq` at commit `{source['commit'][:7]}` on {tree}: ",
        ]
    lines[-1] += (
        f"{plan['rounds']} paired "
        f"rounds of {plan['seconds']:g} s at {plan['concurrency']} clients and {plan['latency_seconds']:g} s "
        f"at each steady load ({_loads(plan)} of the naive capacity), {machine['cpu_count']} cores, "
        "load average "
        f"{load_before:.1f} at the start and {load_after:.1f} at the end."
    )
    lines += [
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|" + "---:|" * 3 + "---|---|",
        *("| " + " | ".join(cell.replace("->", "→") for cell in row) + " |" for row in rows(results)),
    ]
    if pairs := results.get("pairs"):
        saturation = pairs["saturation"]
        lines += [
            "",
            "CPU ms per order by process, median of the saturation rounds: "
            f"{_by_process(saturation['product'], saturation['naive'])}.",
        ]
        for steady in pairs.get("latencies", [])[:1]:  # the highest steady load
            cores = machine["cpu_count"]
            busy = {name: steady["rate"] * steady[name]["cpu_ms_total"] / (10 * cores) for name in VARIANTS}
            lines += [
                "",
                f"At {steady['rate']:.0f}/s ({steady['fraction']:g} of the naive capacity), median of its "
                f"rounds: {_by_process(steady['product'], steady['naive'])}. That is {cores} cores "
                f"{busy['product']:.0f} % busy for the product and {busy['naive']:.0f} % for the naive app.",
            ]
    return "\n".join([*lines, RABBIT_END if rabbitmq else END])


def _by_process(product: dict[str, float], naive: dict[str, float]) -> str:
    """Each process's CPU ms per order: the product's, then the naive app's."""
    by_process = ", ".join(
        f"{name} {_f(product.get(f'cpu_ms_{name}'), 2)}" for name in _PROCESSES if f"cpu_ms_{name}" in product
    )
    return (
        f"product {by_process}; naive api {_f(naive.get('cpu_ms_api'), 2)}, "
        f"worker {_f(naive.get('cpu_ms_worker'), 2)}, postgres {_f(naive.get('cpu_ms_postgres'), 2)}"
    )


def _provenance(results: dict[str, Any]) -> str:
    source = results["source"]
    tree = "a DIRTY tree (the figures describe no commit)" if source["dirty"] else "a clean tree"
    return f"commit `{source['commit'][:7]}` on {tree}"


def _n(value: float) -> str:
    """A count or a rate, with a thin space between thousands as the prose writes them."""
    return f"{value:,.0f}".replace(",", " ")


def render_relay(relay: dict[str, Any], backlogs: dict[str, Any]) -> str:
    """The relay figures block: four ways to drain one table, and backlogs after an outage."""
    variants, ratios, latency = relay["variants"], relay["ratios"], relay["latency"]
    lines = [
        RELAY_START,
        f"Measured by `make bench-relay` at {_provenance(relay)}, {relay['cpus']} cores, load average "
        f"{relay['machine']['load_average'][0]:.1f} at the start: {_n(relay['rows'])} rows drained four "
        "ways, each from a clone of one database.",
        "",
        "| variant | msg/s | CPU s per 10 000 | peak RSS MiB |",
        "|---|---:|---:|---:|",
        *(
            f"| {v['variant']} | {_n(v['rate'])} | {v['cpu_s_per_10k']:.2f} | {v['rss_peak_mb']:.0f} |"
            for _key, v in sorted(variants.items())
        ),
        "",
        f"The product relay (one process) against the naive relay: **{ratios['b/a']:.1f}{TIMES}**; "
        f"against the floor: **{ratios['b/d']:.2f}{TIMES}**. Commit → publish when idle, woken by NOTIFY "
        f"({latency['samples']} samples): p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms.",
        "",
        f"Backlogs of {_n(backlogs['rows'])} rows, {backlogs['rounds']} rounds at "
        f"{_provenance(backlogs)} (drained: {backlogs['relay']}). Ratios pair the variants of one round.",
        "",
        f"| backlog | median msg/s | {TIMES} fresh (median) | {TIMES} fresh per round "
        "| batch ms, first tenth | batch ms, last tenth |",
        "|---|---:|---:|---|---|---|",
    ]
    for name, rate in backlogs["median_rate"].items():
        rounds = backlogs["per_round"]
        per_round = " ".join(f"{r[name]['rate'] / r['fresh']['rate']:.2f}" for r in rounds)
        first = [r[name]["first_tenth_batch_ms"] for r in rounds]
        last = [r[name]["last_tenth_batch_ms"] for r in rounds]
        lines.append(
            f"| {name.replace('_', ' ')} | {_n(rate)} | {backlogs['ratio_vs_fresh'][name]:.2f} | {per_round} "
            f"| {min(first):.0f}{DASH}{max(first):.0f} | {min(last):.0f}{DASH}{max(last):.0f} |"
        )
    lines += ["", f"Target: every backlog at least {backlogs['target_ratio']:g}{TIMES} the fresh drain."]
    return "\n".join([*lines, RELAY_END])


_RABBIT_VARIANTS = {
    "relay": "product relay, 1 process (claim, publish, confirms, mark)",
    "floor": "floor: py-amqp, one message per row, no database",
    "floor_tasks": "py-amqp, the relay's batch tasks, no database",
}


def render_relay_rabbitmq(results: dict[str, Any]) -> str:
    """The RabbitMQ relay block: the relay against the raw confirmed-publish floor, paired by round."""
    rounds, batch = results["per_round"], results["batch"]
    load_before, load_after = results["machine"]["load_average"][0], results["load_average_after"][0]
    ratio, target = results["ratio"], results["target_ratio"]
    verdict = "met" if ratio >= target else "MISSED"
    lines = [
        RABBIT_RELAY_START,
        f"**On RabbitMQ.** Measured by `make bench-relay BROKER=rabbitmq` at {_provenance(results)}, "
        f"{results['cpus']} cores, load average {load_before:.1f} at the start and {load_after:.1f} at the "
        f"end, RabbitMQ {results['machine']['rabbitmq']}: {_n(results['rows'])} rows onto quorum queues in "
        f"{results['rounds']} paired rounds (the order alternating). The product relay claims {batch} rows, "
        f"publishes them as batch tasks of {results['messages_per_task']} messages, waits once for their "
        f"confirms and marks them; the floor publishes as many messages with py-amqp (the relay's encoding "
        f"of one row each), one confirm wait per {batch}, no database: the fastest the broker takes "
        "confirmed messages here. The last row publishes exactly the relay's batch tasks the floor's way. "
        "CPU is the publishing process's (the broker's is not counted).",
        "",
        "| variant | msg/s (median) | per round | AMQP messages | CPU s per 10 000 | peak RSS MiB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for key, label in _RABBIT_VARIANTS.items():
        per_round = " ".join(_n(r[key]["rate"]) for r in rounds)
        last = rounds[-1][key]
        lines.append(
            f"| {label} | {_n(results['median_rate'][key])} | {per_round} | {_n(last['amqp_messages'])} "
            f"| {statistics.median(r[key]['cpu_s_per_10k'] for r in rounds):.2f} "
            f"| {max(r[key]['rss_peak_mb'] for r in rounds):.0f} |"
        )
    per_round_ratios = " ".join(f"{r['ratio']:.2f}" for r in rounds)
    lines += [
        "",
        f"The relay against the floor: **{ratio:.2f}{TIMES}** (per round {per_round_ratios}; "
        f"target at least {target:g}{TIMES}: {verdict}); "
        f"against the relay's own batch tasks published without a database: "
        f"**{results['ratio_tasks']:.2f}{TIMES}**.",
        RABBIT_RELAY_END,
    ]
    return "\n".join(lines)


def render_pending(start: str, end: str, command: str, results: Path) -> str:
    """The block of a results file not measured yet: replaced by the figures once the file exists."""
    return "\n".join(
        [
            start,
            f"**On RabbitMQ.** Not measured yet: `{command}` writes `bench/results/{results.name}` "
            "and renders this block from it.",
            end,
        ]
    )


def rabbitmq_blocks() -> list[tuple[str, str, str]]:
    """(start, end, rendered) of each RabbitMQ block: its results file rendered, or "not measured yet"."""
    blocks = []
    for start, end, command, path, render in (
        (RABBIT_START, RABBIT_END, "make bench BROKER=rabbitmq", RABBIT_RESULTS, render_markdown),
        (
            RABBIT_RELAY_START,
            RABBIT_RELAY_END,
            "make bench-relay BROKER=rabbitmq",
            RABBIT_RELAY_RESULTS,
            render_relay_rabbitmq,
        ),
    ):
        if path.exists():
            blocks.append((start, end, render(json.loads(path.read_text()))))
        else:
            blocks.append((start, end, render_pending(start, end, command, path)))
    return blocks


_SOAK_HEADLINE = re.compile(
    r"make chaos N=(?P<orders>\d+): commit (?P<commit>[0-9a-f]+|unknown)(?P<dirty> \(dirty tree\))?, "
    r"(?P<cores>\d+) cores, load average (?P<load>[\d.]+)"
)
_SOAK_FIGURES = {
    "lost": re.compile(r"^lost: (\d+)", re.M),
    "doubled": re.compile(r"^lost: \d+\s+doubled: (\d+)", re.M),
    "p50": re.compile(r"^lateness .*?: p50 ([\d.]+)", re.M),
    "after": re.compile(r"^after the last fault \((\d+) orders\): max ([\d.]+) s .*?\(bound (\d+) s\)", re.M),
    "wall": re.compile(r"wall time: ([\d.]+) s", re.M),
}


def render_soak(record: str) -> str:
    """The soak block: the headline figures, then the checker's report as ``make chaos`` recorded it."""
    first, _, report = record.strip("\n").partition("\n")
    head = _SOAK_HEADLINE.match(first)
    found = {key: pattern.search(report) for key, pattern in _SOAK_FIGURES.items()}
    if head is None or not all(found.values()):
        raise ValueError("not a make chaos record (tests/fault/chaos.py --record)")
    figure = {key: match.groups() for key, match in found.items() if match is not None}
    tree = "a DIRTY tree" if head["dirty"] else "a clean tree"
    after_orders, after_max, bound = figure["after"]
    return "\n".join(
        [
            SOAK_START,
            f"Measured by `make chaos N={head['orders']}` at commit `{head['commit'][:7]}` on {tree}, "
            f"{head['cores']} cores, load average {head['load']} at the start: "
            f"**lost {figure['lost'][0]}, doubled {figure['doubled'][0]}**; the {after_orders} orders after "
            f"the last fault invoiced at most **{float(after_max):.1f} s** after it (bound {bound} s); "
            f"p50 lateness {float(figure['p50'][0]):.1f} s; wall time {float(figure['wall'][0]):.0f} s.",
            "",
            "```text",
            report,
            "```",
            SOAK_END,
        ]
    )


def render_long(record: str) -> str:
    """The long fault tier's block: its provenance line, then one line per scenario as recorded."""
    first, _, report = record.strip("\n").partition("\n")
    if not first.startswith("make faults-long: commit ") or not report:
        raise ValueError("not a make faults-long record (tests/fault/long.py --record)")
    return "\n".join([LONG_START, f"Measured by `{first}`:", "", "```text", report, "```", LONG_END])


def replace_block(doc: Path, start: str, end: str, rendered: str) -> None:
    """Replace the block between ``start`` and ``end`` (both included in ``rendered``) in ``doc``."""
    text = doc.read_text()
    head, found, rest = text.partition(start)
    _old, found_end, tail = rest.partition(end)
    if not found or not found_end:
        raise ValueError(f"{doc} has no figures block ({start!r} ... {end!r})")
    doc.write_text(head + rendered + tail)


def update_docs(results: dict[str, Any], doc: Path = PERFORMANCE) -> None:
    """Replace the end-to-end figures block of ``docs/performance.md`` with ``results`` rendered."""
    replace_block(doc, START, END, render_markdown(results))


def main() -> int:
    update_docs(json.loads(RESULTS.read_text()))
    relay = json.loads(RELAY_RESULTS.read_text())
    replace_block(
        PERFORMANCE, RELAY_START, RELAY_END, render_relay(relay, json.loads(BACKLOG_RESULTS.read_text()))
    )
    for start, end, rendered in rabbitmq_blocks():
        replace_block(PERFORMANCE, start, end, rendered)
    replace_block(FAULTS, SOAK_START, SOAK_END, render_soak(SOAK_RESULTS.read_text()))
    replace_block(FAULTS, LONG_START, LONG_END, render_long(LONG_RESULTS.read_text()))
    for doc, sources in (
        (PERFORMANCE, (RESULTS, RELAY_RESULTS, BACKLOG_RESULTS, RABBIT_RESULTS, RABBIT_RELAY_RESULTS)),
        (FAULTS, (SOAK_RESULTS, LONG_RESULTS)),
    ):
        rendered = ", ".join(p.name for p in sources if p.exists())
        missing = [p.name for p in sources if not p.exists()]
        print(f"{doc.relative_to(ROOT)}: figures rendered from {rendered}", end="")
        print(f" ({', '.join(missing)}: not measured yet)" if missing else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
