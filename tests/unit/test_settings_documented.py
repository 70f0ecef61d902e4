"""The settings table of docs/configuration.md is the settings classes rendered, and every setting says
what it is for (the fixed interface's rule: every variable the environment can set is documented)."""

from __future__ import annotations

from pathlib import Path

from flask_outbox.settings import setting_rows

from shared.config import Settings, settings_markdown

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def test_the_committed_settings_table_is_the_generated_one() -> None:
    """Fails when a setting is added, removed or redescribed without ``python tools/settings_table.py``."""
    block = CONFIGURATION.read_text().partition(BEGIN)[2].partition(END)[0]

    assert settings_markdown() in block, "stale table: run python tools/settings_table.py"


def test_every_setting_has_a_description_and_a_part() -> None:
    rows = list(setting_rows(Settings))

    assert {name for name, *_ in rows} == {str(f.validation_alias) for f in Settings.model_fields.values()}
    assert [name for name, _default, part, text in rows if not text or not part] == []


def test_at_most_thirty_operator_facing_settings() -> None:
    assert len(Settings.model_fields) <= 30
