"""Pure helpers of the benchmark: percentiles, medians of runs, the printed table, the JSON file."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Row",
    "format_table",
    "median_of",
    "percentile",
    "rates_by_part",
    "ratio",
    "summarize",
    "write_results",
]

Row = tuple[str, str, str]
"""(measure, value, detail): one line of the printed table."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks; NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(latencies_ms: Sequence[float], quantiles: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": …, "p95": …, "p99": …}`` of one run's latencies."""
    return {f"p{q:g}": percentile(latencies_ms, q) for q in quantiles}


def median_of(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs (runs are measured alike, so they share their keys)."""
    if not runs:
        return {}
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def rates_by_part(timestamps: Sequence[float], parts: int) -> list[float]:
    """Events/s in each of ``parts`` consecutive equal shares of the events (by time); [] if too few."""
    ordered = sorted(timestamps)
    size = len(ordered) // parts
    if size < 2:
        return []
    chunks = [ordered[n * size : (n + 1) * size] for n in range(parts)]
    return [(len(c) - 1) / (c[-1] - c[0]) if c[-1] > c[0] else math.nan for c in chunks]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:,.1f}"
    return str(value)


def format_table(rows: Sequence[Sequence[object]], title: str = "", header: Sequence[str] = ()) -> str:
    """A plain fixed-width table, readable in a terminal and pasteable into a README.

    The first column is left-aligned, numbers right-aligned; the header defaults to measure/value/detail.
    """
    head = tuple(header) or ("measure", "value", "detail")
    width = len(head)
    widths = [max(len(_cell(row[i])) for row in (head, *rows)) for i in range(width)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def render(row: Sequence[object]) -> str:
        cells = [
            _cell(value).rjust(widths[i]) if 0 < i < width - 1 else _cell(value).ljust(widths[i])
            for i, value in enumerate(row)
        ]
        return "| " + " | ".join(cells) + " |"

    body = [line, render(head), line, *(render(row) for row in rows), line]
    return "\n".join([title, *body] if title else body)


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_results(path: Path, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as indented JSON, creating the folder; atomic so a crash leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(_json_safe(results), indent=2, sort_keys=True) + "\n")
    partial.replace(path)
    return path
