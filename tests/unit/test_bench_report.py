"""The docs' performance and soak figures are the committed results files, rendered (``bench.report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.report import (
    BACKLOG_RESULTS,
    END,
    FAULTS,
    LONG_END,
    LONG_RESULTS,
    LONG_START,
    PERFORMANCE,
    RABBIT_END,
    RABBIT_RELAY_END,
    RABBIT_RELAY_RESULTS,
    RABBIT_RELAY_START,
    RABBIT_RESULTS,
    RABBIT_START,
    RELAY_END,
    RELAY_RESULTS,
    RELAY_START,
    RESULTS,
    SOAK_END,
    SOAK_RESULTS,
    SOAK_START,
    START,
    rabbitmq_blocks,
    render_long,
    render_markdown,
    render_pending,
    render_relay,
    render_relay_rabbitmq,
    render_soak,
    update_docs,
)


def _results() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(RESULTS.read_text())
    return loaded


def _block(doc: Path, start: str, end: str) -> str:
    return start + doc.read_text().partition(start)[2].partition(end)[0] + end


def test_the_performance_figures_are_the_committed_results_file_rendered() -> None:
    """Fails when someone edits the figures by hand or commits a results file without ``make bench``'s
    docs/performance.md update (or the other way round)."""
    assert _block(PERFORMANCE, START, END) == render_markdown(_results())


def test_the_half_load_line_gives_cpu_by_process_and_how_busy_the_cores_were() -> None:
    results: dict[str, Any] = _results()
    measured = results["pairs"]["latencies"][0]

    def cpu(variant: str, **figures: float) -> dict[str, Any]:
        kept = {k: v for k, v in measured[variant].items() if not k.startswith("cpu_ms")}
        return kept | {f"cpu_ms_{name}": value for name, value in figures.items()}

    half = {
        **measured,
        "rate": 100.0,
        "product": cpu("product", api=4.0, relay=1.5, total=12.0),
        "naive": cpu("naive", api=4.0, worker=3.0, postgres=1.0, total=8.0),
    }
    results["pairs"] = {**results["pairs"], "latencies": [half]}
    results["machine"] = {**results["machine"], "cpu_count": 2}
    rendered = render_markdown(results)

    assert (
        "At 100/s (0.5 of the naive capacity), median of its rounds: product api 4.00, relay 1.50;"
        in rendered
    )
    assert "That is 2 cores 60 % busy for the product and 40 % for the naive app." in rendered


def test_the_relay_figures_are_the_committed_results_files_rendered() -> None:
    relay, backlogs = json.loads(RELAY_RESULTS.read_text()), json.loads(BACKLOG_RESULTS.read_text())

    assert _block(PERFORMANCE, RELAY_START, RELAY_END) == render_relay(relay, backlogs)


def test_the_rabbitmq_blocks_are_their_results_files_rendered_or_not_measured_yet() -> None:
    """A block says "not measured yet" only while its results file is absent; once it exists the block
    is that file rendered (``make bench BROKER=rabbitmq`` / ``python -m bench.report`` write it)."""
    files = {RABBIT_START: RABBIT_RESULTS, RABBIT_RELAY_START: RABBIT_RELAY_RESULTS}

    for start, end, rendered in rabbitmq_blocks():
        assert _block(PERFORMANCE, start, end) == rendered
        assert ("Not measured yet" in rendered) is not files[start].exists()


def test_a_rabbitmq_run_renders_into_its_own_block_and_the_redis_one_stays_put() -> None:
    redis_run = _results()
    machine = {**redis_run["machine"], "rabbitmq": "3.10.8"}  # type: ignore[dict-item]
    rabbit_run = {**redis_run, "broker": "rabbitmq", "machine": machine}

    rendered = render_markdown(rabbit_run)

    assert rendered.startswith(RABBIT_START)
    assert rendered.endswith(RABBIT_END)
    assert "`make bench BROKER=rabbitmq`" in rendered
    assert "no publisher confirms" in rendered
    assert render_markdown(redis_run).startswith(START)
    pending = render_pending(RABBIT_START, RABBIT_END, "make bench BROKER=rabbitmq", RABBIT_RESULTS)
    assert pending.startswith(RABBIT_START)
    assert "Not measured yet" in pending


def _rabbit_relay_round(number: int, relay: float, floor: float, tasks: float) -> dict[str, object]:
    def variant(rate: float, messages: int) -> dict[str, float]:
        return {"rate": rate, "cpu_s_per_10k": 1.0, "rss_peak_mb": 100.0, "amqp_messages": messages}

    return {
        "round": number,
        "relay": variant(relay, 100),
        "floor": variant(floor, 10_000),
        "floor_tasks": variant(tasks, 100),
        "ratio": relay / floor,
        "ratio_tasks": relay / tasks,
    }


def test_the_rabbitmq_relay_block_gives_the_ratio_to_the_floor_and_its_verdict() -> None:
    rounds = [_rabbit_relay_round(0, 7_000, 10_000, 20_000), _rabbit_relay_round(1, 6_000, 10_000, 20_000)]
    results = {
        **_results(),
        "machine": {**_results()["machine"], "rabbitmq": "3.10.8"},  # type: ignore[dict-item]
        "load_average_after": [1.0, 1.0, 1.0],
        "rows": 10_000,
        "rounds": 2,
        "batch": 500,
        "messages_per_task": 100,
        "cpus": 2,
        "median_rate": {"relay": 6_500.0, "floor": 10_000.0, "floor_tasks": 20_000.0},
        "ratio": 0.65,
        "ratio_tasks": 0.325,
        "target_ratio": 0.7,
        "per_round": rounds,
    }

    rendered = render_relay_rabbitmq(results)

    assert rendered.startswith(RABBIT_RELAY_START)
    assert rendered.endswith(RABBIT_RELAY_END)
    assert "**0.65\u00d7** (per round 0.70 0.60; target at least 0.7\u00d7: MISSED)" in rendered
    assert (
        "| floor: py-amqp, one message per row, no database | 10 000 | 10 000 10 000 | 10 000 |" in rendered
    )
    assert "MISSED" not in render_relay_rabbitmq({**results, "ratio": 0.7})


def test_the_soak_figures_are_the_committed_record_rendered() -> None:
    assert _block(FAULTS, SOAK_START, SOAK_END) == render_soak(SOAK_RESULTS.read_text())


def test_the_long_fault_figures_are_the_committed_record_rendered() -> None:
    rendered = render_long(LONG_RESULTS.read_text())

    assert _block(FAULTS, LONG_START, LONG_END) == rendered
    assert "shipped defaults" in rendered
    with pytest.raises(ValueError, match="not a make faults-long record"):
        render_long("something else\n")


def test_the_soak_headline_reads_the_record() -> None:
    rendered = render_soak(SOAK_RESULTS.read_text())

    assert "lost 0, doubled 0" in rendered
    assert "(bound 120 s)" in rendered
    with pytest.raises(ValueError, match="not a make chaos record"):
        render_soak("something else\nlost: 0\n")


def test_the_figures_name_the_commit_and_say_when_the_tree_was_dirty() -> None:
    results = _results()
    source = dict(results["source"])  # type: ignore[call-overload]

    assert f"commit `{source['commit'][:7]}` on a clean tree" in render_markdown(
        {**results, "source": {**source, "dirty": False}}
    )
    assert "DIRTY tree" in render_markdown({**results, "source": {**source, "dirty": True}})


def test_update_docs_replaces_only_the_block_and_refuses_a_file_without_one(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"before\n{START}\nold figures\n{END}\nafter\n")

    update_docs(_results(), doc)

    text = doc.read_text()
    assert text.startswith("before\n")
    assert text.endswith("\nafter\n")
    assert "old figures" not in text
    assert render_markdown(_results()) in text
    doc.write_text("no block here\n")
    with pytest.raises(ValueError, match="no figures block"):
        update_docs(_results(), doc)
