"""``pytest -m LAYER`` selects exactly the tests of that layer's folder (markers: tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("unit", "integration", "e2e", "fault", "compose")
EVERYTHING = ""
SELECTIONS = (EVERYTHING, *LAYERS, "not fault")
"""The unfiltered suite, then every ``-m`` expression docs/operations.md documents."""

# One interpreter runs ``pytest --collect-only -q [-m EXPR] tests`` once per expression: the
# arguments of the command line, without paying for the imports six times.
DRIVER = """
import sys, pytest
for expression in sys.argv[1:]:
    print("@@ selection", expression, flush=True)
    selection = ["-m", expression] if expression else []
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *selection, "tests"])
    print("@@ exit", int(code), flush=True)
"""


@pytest.fixture(scope="module")
def selections() -> dict[str, set[str]]:
    """Node ids each selection collects, read from pytest's own ``--collect-only -q`` output."""
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *SELECTIONS],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("@@ selection"):
            current = found.setdefault(line.removeprefix("@@ selection").strip(), set())
        elif line.startswith("@@ exit"):
            assert line == "@@ exit 0", result.stdout[-3000:]
        elif "::" in line:
            current.add(line)
    assert list(found) == list(SELECTIONS), result.stdout[-3000:]
    return found


def _in(folder: str, tests: set[str]) -> set[str]:
    return {t for t in tests if t.startswith(f"tests/{folder}/")}


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_marker_selects_exactly_the_tests_of_its_folder(
    layer: str, selections: dict[str, set[str]]
) -> None:
    everything = selections[EVERYTHING]
    assert _in(layer, everything), f"no test under tests/{layer}/ was collected"
    assert selections[layer] == _in(layer, everything)


def test_not_fault_selects_everything_outside_the_fault_folder(selections: dict[str, set[str]]) -> None:
    everything = selections[EVERYTHING]
    assert selections["not fault"] == everything - _in("fault", everything)
    assert selections["not fault"]


def test_every_collected_test_belongs_to_exactly_one_layer(selections: dict[str, set[str]]) -> None:
    layers = [selections[layer] for layer in LAYERS]
    assert sum(len(selected) for selected in layers) == len(selections[EVERYTHING])
    assert set().union(*layers) == selections[EVERYTHING]
