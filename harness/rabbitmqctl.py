"""``rabbitmqctl`` for the benches and the tests, and the passwords they give the users they make."""

from __future__ import annotations

import secrets
import subprocess

__all__ = ["broker_password", "rabbitmqctl"]


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    """Run ``rabbitmqctl --quiet`` on the local node; its output, or ``RuntimeError`` with its message."""
    result = subprocess.run(
        ["rabbitmqctl", "--quiet", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def broker_password() -> str:
    """32 hex characters: strong enough for the services' check, and never starting with ``-``, which
    ``rabbitmqctl add_user`` would read as an option (``token_urlsafe`` does, one time in 64)."""
    return secrets.token_hex(16)
