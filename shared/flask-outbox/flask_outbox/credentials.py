"""Guessable secrets refuse to start: placeholders and short passwords in service URLs and basic auth.

A copied ``.env.example`` must not run in production with ``change-me`` as the database or broker
password. A URL without a password (local trust or peer authentication, a socket) is allowed: there is
nothing to guess. Errors name the variable and never the secret, which would land in the logs.

``python -m flask_outbox.credentials VAR…`` checks ``user:password`` pairs (comma-separated, as Flower's
``FLOWER_BASIC_AUTH``) in the named environment variables and exits 2 with the reason, before a
process that reads them starts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "PLACEHOLDER",
    "WeakCredential",
    "check_basic_auth",
    "check_url_password",
    "main",
    "password_problem",
]

MIN_PASSWORD_LENGTH = 16
"""A ``secrets.token_urlsafe(32)`` is 43 characters; under 16 is a word someone chose, not a secret."""

PLACEHOLDER = re.compile(
    r"change.?me|replace.?me|your.?(api.?)?(key|password)|placeholder|example|secret|password|^(.)\3*$",
    re.IGNORECASE,
)
"""Values left in place of a secret (``change-me``, ``replace-me``, ``your-password``, ``xxxxxxxx``…)."""

MAKE_ONE = 'Make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


class WeakCredential(ValueError):
    """A configured password could be guessed; the process refuses to start with it."""


def password_problem(password: str) -> str | None:
    """Why ``password`` could be guessed, in words that do not repeat it; None when it is strong enough."""
    if PLACEHOLDER.search(password):
        return "is a placeholder, not a password"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"is {len(password)} characters; a password needs at least {MIN_PASSWORD_LENGTH}"
    return None


def check_url_password(variable: str, url: str) -> None:
    """Raise ``WeakCredential`` naming ``variable`` when ``url`` carries a guessable password.

    A failover list (``amqp://h1;amqp://h2``, as kombu reads ``BROKER_URL``) is judged URL by URL: a
    weak password on the second node is as open a door as one on the first.
    """
    urls = url.split(";")
    for position, one in enumerate(urls, start=1):
        try:
            password = urlsplit(one.strip()).password
        except ValueError:  # a malformed URL is its driver's to report; it holds no password we can read
            continue
        if password is None:
            continue
        problem = password_problem(unquote(password))
        if problem is not None:
            where = f"{variable} (URL {position} of {len(urls)})" if len(urls) > 1 else variable
            raise WeakCredential(f"the password in {where} {problem}. {MAKE_ONE}")


def check_basic_auth(variable: str, value: str) -> None:
    """Raise ``WeakCredential`` for a missing or guessable password among ``user:password`` pairs."""
    pairs = [pair for pair in value.split(",") if pair.strip()]
    if not pairs:
        raise WeakCredential(f"{variable} is empty; set user:password. {MAKE_ONE}")
    for position, pair in enumerate(pairs, start=1):
        user, _, password = pair.partition(":")
        where = f"{variable} entry {position}"
        if not user.strip() or not password:
            raise WeakCredential(f"{where} is not user:password")
        problem = password_problem(password)
        if problem is not None:
            raise WeakCredential(f"the password of {where} {problem}. {MAKE_ONE}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flask_outbox.credentials",
        description="Refuse guessable user:password pairs in environment variables (exit 2).",
    )
    parser.add_argument("variables", nargs="+", metavar="VAR", help="e.g. FLOWER_BASIC_AUTH")
    args = parser.parse_args(argv)
    for variable in args.variables:
        try:
            check_basic_auth(variable, os.environ.get(variable, ""))
        except WeakCredential as exc:
            print(f"refusing to start: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
