"""The bench harness's pure helpers: percentiles, medians, the table, the results file."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from bench.hotspots import package_of, top
from bench.orders import order_body
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


def test_profile_time_is_grouped_by_owning_package() -> None:
    assert package_of("/w/.venv/lib/python3.11/site-packages/sqlalchemy/orm/session.py") == "sqlalchemy"
    assert package_of("/w/main/order_service/api.py") == "order_service"
    assert package_of("/usr/lib/python3.11/json/decoder.py") == "stdlib"
    shares = top(Counter({"psycopg": 3.0, "flask": 1.0}), total=8.0, limit=1)
    assert shares == [{"name": "psycopg", "seconds": 3.0, "share": 37.5}]


def test_generated_orders_are_valid_and_tagged() -> None:
    body = order_body(random.Random(1), "bench-")
    assert body["customer_id"].startswith("bench-")
    assert 1 <= len(body["lines"]) <= 4
    assert all(line["quantity"] >= 1 and isinstance(line["unit_amount"], int) for line in body["lines"])
