"""The docs' performance and soak figures are the committed results files, rendered (``bench.report``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import (
    BACKLOG_RESULTS,
    END,
    FAULTS,
    LONG_END,
    LONG_RESULTS,
    LONG_START,
    PERFORMANCE,
    RELAY_END,
    RELAY_RESULTS,
    RELAY_START,
    RESULTS,
    SOAK_END,
    SOAK_RESULTS,
    SOAK_START,
    START,
    render_long,
    render_markdown,
    render_relay,
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


def test_the_relay_figures_are_the_committed_results_files_rendered() -> None:
    relay, backlogs = json.loads(RELAY_RESULTS.read_text()), json.loads(BACKLOG_RESULTS.read_text())

    assert _block(PERFORMANCE, RELAY_START, RELAY_END) == render_relay(relay, backlogs)


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
