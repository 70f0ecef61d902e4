"""The API under gunicorn behind a real proxy hop (tests/support/proxy.py), clients on 127.0.0.2 and .3.

With ``TRUSTED_PROXY_HOPS=1`` the failed-auth throttle sees each client's own address (the one the
proxy appended, not one a client wrote); with 0 every client looks like the proxy, and still a valid
key passes.
"""

from __future__ import annotations

import http.client
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.processes import TEST_API_KEY, Service, api_service, free_port, settings_env, wait_for_http
from shared.config import Settings

LIMIT = 5
CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"
ORDER = {
    "customer_id": "cus_proxy",
    "currency": "EUR",
    "lines": [{"sku": "A-1", "quantity": 1, "unit_amount": 5}],
}

Send = Callable[..., int]


def _start(settings: Settings, log_dir: Path, hops: int) -> tuple[list[Service], int]:
    env = settings_env(
        settings,
        TRUSTED_PROXY_HOPS=str(hops),
        AUTH_FAILURE_RATE_LIMIT=f"{LIMIT} per minute",
        SECRET_KEY="e2e-" + uuid.uuid4().hex,
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    api_port, proxy_port = free_port(), free_port()
    api = api_service(env, log_dir, api_port).start()
    command = [sys.executable, "-m", "tests.support.proxy", str(proxy_port), f"http://127.0.0.1:{api_port}"]
    proxy = Service("proxy", command, env, log_dir / "proxy.log").start()
    try:
        wait_for_http(f"http://127.0.0.1:{proxy_port}/readyz", timeout=60)
    except BaseException:
        for service in (proxy, api):
            service.stop()
            print(service.logs()[-3000:])
        raise
    return [proxy, api], proxy_port


@pytest.fixture(params=[0, 1], ids=["no-trusted-proxy", "one-trusted-proxy"])
def through_proxy(
    request: pytest.FixtureRequest, pg_settings: Settings, tmp_path: Path
) -> Iterator[tuple[int, Send]]:
    """(TRUSTED_PROXY_HOPS, send): ``send(source, key, method="GET", forwarded_for=None)`` → status."""
    hops = int(request.param)
    services, port = _start(pg_settings, tmp_path / "logs", hops)

    def send(source: str, key: str, method: str = "GET", forwarded_for: str | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        try:
            connection.request(
                method, "/orders", body=json.dumps(ORDER) if method == "POST" else None, headers=headers
            )
            return connection.getresponse().status
        finally:
            connection.close()

    yield hops, send
    for service in services:
        service.stop()
        print(f"--- {service.name}\n{service.logs()[-3000:]}")  # shown only when the test failed


def _guess(send: Send, source: str, forwarded_for: str | None = None) -> int:
    return send(source, f"osk_guess-{uuid.uuid4().hex}", forwarded_for=forwarded_for)


def test_one_guessing_client_behind_the_proxy(through_proxy: tuple[int, Send]) -> None:
    hops, send = through_proxy

    guesses = [_guess(send, CLIENT_A) for _ in range(LIMIT + 1)]
    spoofed = _guess(send, CLIENT_A, forwarded_for="198.51.100.7")  # A claims another address
    other_client = _guess(send, CLIENT_B)
    valid = [send(source, TEST_API_KEY, "POST") for source in (CLIENT_A, CLIENT_B)]

    assert guesses == [401] * LIMIT + [429]
    assert spoofed == 429  # the proxy appended A's real address; a client's own header gains nothing
    assert other_client == (401 if hops else 429)  # without a trusted hop, B shares the proxy's address
    assert valid == [201, 201]  # a valid key passes from a throttled address, either way
