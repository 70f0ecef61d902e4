"""A test whose server or tool is missing here: skipped on a developer's machine, failed in CI.

``.ci/run`` (``CI=true``) installs everything the suite needs, so there a missing prerequisite means the
setup broke, and a skip would let the tests behind it pass unnoticed. The compose test has its own rule
(``COMPOSE_TEST_REQUIRED``): its tools may not be installable on every CI machine.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["missing"]


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under ``CI=true`` fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, and a prerequisite is missing: {reason}")
    pytest.skip(reason)
