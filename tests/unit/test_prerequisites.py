"""A missing prerequisite skips a test on a developer's machine and fails it in CI."""

from __future__ import annotations

import pytest

from tests.support.prerequisites import missing


def test_a_missing_prerequisite_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, and a prerequisite is missing: no rabbitmqctl"):
        missing("no rabbitmqctl")


def test_a_missing_prerequisite_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no rabbitmqctl"):
        missing("no rabbitmqctl")
