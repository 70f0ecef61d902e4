"""Every setting the environment can set is in the README's configuration (the fixed interface's rule)."""

from __future__ import annotations

from pathlib import Path

from shared.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_environment_variable_of_the_settings_is_documented_in_the_readme() -> None:
    names = [
        str(field.validation_alias) for field in Settings.model_fields.values() if field.validation_alias
    ]
    text = README.read_text()

    assert len(names) > 40, "the settings are read from their aliases"
    assert [name for name in names if f"`{name}`" not in text] == []
