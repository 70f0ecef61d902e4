"""The bench's table, from a results file: printed by ``make bench`` and written into the README.

``make bench`` renders the figures block of the README's *Performance* section from the
``bench/results/e2e.json`` it just wrote (``python -m bench.report`` does it again from the file), so
the README quotes only figures that a results file holds, with the commit they were measured at;
``tests/unit/test_bench_report.py`` fails when the block and the committed file disagree.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["HEADER", "README", "TARGETS", "render_markdown", "rows", "update_readme"]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results" / "e2e.json"
START = "<!-- figures: rendered by bench/report.py from bench/results/e2e.json; do not edit -->"
END = "<!-- end of figures -->"
TARGETS = {"e2e_rps": (">=", 0.9), "post_rps": (">=", 0.9), "p50": ("<=", 1.5)}
HEADER = ("measure", "naive", "product", "ratio", "per round", "target")
_PROCESSES = ("api", "relay", "invoice_relay", "worker", "consumer", "postgres")

Row = tuple[str, str, str, str, str, str]


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, target = TARGETS[key]
    met = value >= target if op == ">=" else value <= target
    return f"{op} {target:g} {'met' if met else 'MISSED'}"


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
    """The table: medians over rounds per variant, and the median of the per-round ratios."""
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


def render_markdown(results: dict[str, Any]) -> str:
    """The README's figures block: where and when they were measured, the table, CPU by process."""
    source, machine, plan = results["source"], results["machine"], results["plan"]
    tree = "a DIRTY tree (the figures describe no commit)" if source["dirty"] else "a clean tree"
    load_before, load_after = machine["load_average"][0], results["load_average_after"][0]
    lines = [
        START,
        f"Measured by `make bench` at commit `{source['commit'][:7]}` on {tree}: {plan['rounds']} paired "
        f"rounds of {plan['seconds']:g} s at {plan['concurrency']} clients and {plan['latency_seconds']:g} s "
        f"at half the naive capacity, {machine['cpu_count']} cores, load average "
        f"{load_before:.1f} at the start and {load_after:.1f} at the end.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|" + "---:|" * 3 + "---|---|",
        *("| " + " | ".join(cell.replace("->", "→") for cell in row) + " |" for row in rows(results)),
    ]
    if pairs := results.get("pairs"):
        product, naive = pairs["saturation"]["product"], pairs["saturation"]["naive"]
        by_process = ", ".join(
            f"{name} {_f(product.get(f'cpu_ms_{name}'), 2)}"
            for name in _PROCESSES
            if f"cpu_ms_{name}" in product
        )
        lines += [
            "",
            f"CPU ms per order by process, median of the saturation rounds: product {by_process}; "
            f"naive api {_f(naive.get('cpu_ms_api'), 2)}, worker {_f(naive.get('cpu_ms_worker'), 2)}, "
            f"postgres {_f(naive.get('cpu_ms_postgres'), 2)}.",
        ]
    return "\n".join([*lines, END])


def update_readme(results: dict[str, Any], readme: Path = README) -> None:
    """Replace the README's figures block with ``results`` rendered."""
    text = readme.read_text()
    head, found, rest = text.partition(START)
    _old, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"{readme} has no figures block ({START!r} ... {END!r})")
    readme.write_text(head + render_markdown(results) + tail)


def main() -> int:
    update_readme(json.loads(RESULTS.read_text()))
    print(f"{README.name}: figures rendered from {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
