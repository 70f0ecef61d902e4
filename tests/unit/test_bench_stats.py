"""The bench harness's pure helpers: percentiles, medians, the table, the results file."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench.measure import Delivery
from bench.orders import order_body
from bench.spy import summarize_raw
from bench.stats import format_table, median_of, percentile, rates_by_part, ratio, summarize, write_results


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7


def test_percentile_of_nothing_is_nan_and_out_of_range_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_summarize_names_the_quantiles() -> None:
    assert summarize([1.0, 2.0, 3.0]) == {"p50": 2.0, "p95": pytest.approx(2.9), "p99": pytest.approx(2.98)}


def test_median_of_runs_takes_each_figure_separately() -> None:
    runs = [{"rps": 10.0, "p50": 5.0}, {"rps": 30.0, "p50": 1.0}, {"rps": 20.0, "p50": 9.0}]
    assert median_of(runs) == {"rps": 20.0, "p50": 5.0}
    assert median_of([]) == {}


def test_ratio_of_zero_is_nan() -> None:
    assert ratio(9, 10) == pytest.approx(0.9)
    assert math.isnan(ratio(1, 0))


def test_rates_by_part_show_a_slowing_drain() -> None:
    steady = [float(t) for t in range(10)]
    slowing = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 11.0, 15.0, 19.0, 23.0, 27.0]
    assert rates_by_part(steady, 3) == [1.0, 1.0, 1.0]
    assert rates_by_part(slowing, 3) == [1.0, 0.5, 0.25]
    assert rates_by_part([1.0, 2.0], 3) == []


def test_table_aligns_columns_and_shows_nan_as_na() -> None:
    table = format_table([("write rps", "1,200", "p50 3 ms"), ("ratio", math.nan, "")], title="bench")  # type: ignore[list-item]
    lines = table.splitlines()
    assert lines[0] == "bench"
    assert len({len(line) for line in lines[1:]}) == 1
    assert "n/a" in table
    assert "| write rps |" in table


def test_results_are_written_as_json_with_nan_as_null(tmp_path: Path) -> None:
    path = write_results(tmp_path / "results" / "e2e.json", {"ratio": math.nan, "runs": [{"p50": 1.5}]})
    assert json.loads(path.read_text()) == {"ratio": None, "runs": [{"p50": 1.5}]}
    assert not list(path.parent.glob("*.tmp"))


def test_py_spy_samples_are_counted_inclusive_and_self_and_idle_ones_dropped() -> None:
    site = "/w/.venv/lib/python3.11/site-packages"
    raw = "\n".join(
        [
            f'process 1:"gunicorn";handle ({site}/flask/app.py:10);execute ({site}/psycopg/cursor.py:5) 3',
            f'process 1:"gunicorn";handle ({site}/flask/app.py:12);dumps (/usr/lib/json/__init__.py:1) 1',
            'process 1:"gunicorn";run (/usr/lib/threading.py:3);select (/usr/lib/selectors.py:9) 50',
        ]
    )
    busy, inclusive, own = summarize_raw(raw)
    assert busy == 4  # the idle select is not CPU
    assert inclusive[0] == ("handle (flask/app.py)", 4)  # two lines of one function merged
    assert ("execute (psycopg/cursor.py)", 3) in own


def test_delivery_sustained_rate_counts_the_middle_of_the_span() -> None:
    created = [float(t) for t in range(1, 11)]  # one invoice a second, first order at t=0
    delivery = Delivery(
        10, first_placed=0.0, first_created=1.0, last_created=10.0, latencies_ms=[], created=created
    )
    assert delivery.throughput == pytest.approx(1.0)
    assert delivery.sustained() == pytest.approx(1.0)  # 2.0 <= t < 8.0: six in six seconds


def test_generated_orders_are_valid_and_tagged() -> None:
    body = order_body(random.Random(1), "bench-")
    assert body["customer_id"].startswith("bench-")
    assert 1 <= len(body["lines"]) <= 4
    assert all(line["quantity"] >= 1 and isinstance(line["unit_amount"], int) for line in body["lines"])
