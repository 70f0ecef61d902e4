"""Render every setting into ``docs/configuration.md``, between its settings markers.

``python tools/settings_table.py`` rewrites the table from the settings classes
(``shared.config.settings_markdown``: variable, default, part, description); ``--check`` exits 1
when the committed table differs. ``tests/unit/test_settings_documented.py`` runs the same check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.config import settings_markdown  # after the path above: runs from a plain checkout

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
NOTE = "<!-- generated from the settings classes by tools/settings_table.py; do not edit -->"


def block() -> str:
    """What goes between the markers: the note and the table."""
    return f"{BEGIN}\n{NOTE}\n{settings_markdown()}\n{END}"


def rendered(text: str) -> str:
    """``text`` with its settings block replaced by the generated one."""
    head, found, rest = text.partition(BEGIN)
    _old, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return head + block() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table differs")
    args = parser.parse_args(argv)
    text = CONFIGURATION.read_text()
    new = rendered(text)
    if args.check:
        if new != text:
            print(f"{CONFIGURATION.name}: the settings table is stale; run python tools/settings_table.py")
            return 1
        return 0
    CONFIGURATION.write_text(new)
    print(f"{CONFIGURATION.name}: settings table written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
