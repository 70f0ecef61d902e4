"""The README's performance figures are the committed results file, rendered (``bench.report``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import END, README, RESULTS, START, render_markdown, update_readme


def _results() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(RESULTS.read_text())
    return loaded


def test_the_readme_figures_are_the_committed_results_file_rendered() -> None:
    """Fails when someone edits the figures by hand or commits a results file without ``make bench``'s
    README update (or the other way round)."""
    block = README.read_text().partition(START)[2].partition(END)[0]

    assert START + block + END == render_markdown(_results())


def test_the_figures_name_the_commit_and_say_when_the_tree_was_dirty() -> None:
    results = _results()
    source = dict(results["source"])  # type: ignore[call-overload]

    assert f"commit `{source['commit'][:7]}` on a clean tree" in render_markdown(
        {**results, "source": {**source, "dirty": False}}
    )
    assert "DIRTY tree" in render_markdown({**results, "source": {**source, "dirty": True}})


def test_update_readme_replaces_only_the_block_and_refuses_a_readme_without_one(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{START}\nold figures\n{END}\nafter\n")

    update_readme(_results(), readme)

    text = readme.read_text()
    assert text.startswith("before\n")
    assert text.endswith("\nafter\n")
    assert "old figures" not in text
    assert render_markdown(_results()) in text
    readme.write_text("no block here\n")
    with pytest.raises(ValueError, match="no figures block"):
        update_readme(_results(), readme)
