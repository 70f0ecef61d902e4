"""TRUSTED_PROXY_HOPS: the client address (and scheme) from X-Forwarded-For/-Proto, only when configured.

Without trusted proxies the headers are ignored, so a client cannot spend another's failure budget or
escape its own by sending X-Forwarded-For (tests/e2e/test_proxy_hop.py puts a real proxy in front).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask, request
from werkzeug.test import TestResponse

from shared.config import Settings
from tests.unit.conftest import API_KEY, app_on_sqlite

LIMIT = 3
PROXY = "10.0.0.5"


def _app(settings: Settings, hops: int) -> Iterator[Flask]:
    yield from app_on_sqlite(
        settings.model_copy(
            update={"trusted_proxy_hops": hops, "auth_failure_rate_limit": f"{LIMIT} per minute"}
        )
    )


@pytest.fixture
def direct(api_settings: Settings) -> Iterator[Flask]:
    yield from _app(api_settings, 0)


@pytest.fixture
def behind_one_proxy(api_settings: Settings) -> Iterator[Flask]:
    yield from _app(api_settings, 1)


def _guess(app: Flask, forwarded_for: str, key: str = "osk_guess") -> TestResponse:
    return app.test_client().get(
        "/orders",
        headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": forwarded_for},
        environ_base={"REMOTE_ADDR": PROXY},
    )


def test_without_trusted_proxies_a_spoofed_forwarded_for_gains_nothing(direct: Flask) -> None:
    statuses = [_guess(direct, f"198.51.100.{n}", f"osk_guess-{n}").status_code for n in range(LIMIT + 2)]

    assert statuses == [401] * LIMIT + [429, 429]  # one address, whatever the header claims
    assert _guess(direct, "198.51.100.99", API_KEY).status_code == 200


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(behind_one_proxy: Flask) -> None:
    first = [_guess(behind_one_proxy, "198.51.100.1", f"osk_guess-{n}").status_code for n in range(LIMIT + 1)]
    spoofed = _guess(behind_one_proxy, "203.0.113.9, 198.51.100.1", "osk_guess-spoofed").status_code
    other = _guess(behind_one_proxy, "198.51.100.2", "osk_guess-other").status_code

    assert first == [401] * LIMIT + [429]
    assert spoofed == 429  # the proxy appended the real peer: what the client wrote before it is ignored
    assert other == 401
    assert _guess(behind_one_proxy, "198.51.100.1", API_KEY).status_code == 200


def test_the_forwarded_scheme_marks_the_request_secure_only_behind_a_trusted_proxy(
    direct: Flask, behind_one_proxy: Flask
) -> None:
    seen: dict[str, tuple[bool, str | None]] = {}
    for name, app in (("direct", direct), ("proxied", behind_one_proxy)):
        with app.test_client() as client:  # keeps the last request's context open for a look
            client.get(
                "/healthz",
                headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.1"},
                environ_base={"REMOTE_ADDR": PROXY},
            )
            seen[name] = (request.is_secure, request.remote_addr)

    assert seen == {"direct": (False, PROXY), "proxied": (True, "198.51.100.1")}
