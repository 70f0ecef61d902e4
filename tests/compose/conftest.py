"""The compose stack: a private engine, the stand-in images, the app image and ``make up``, once per module.

Skipped with the reason when no engine can be set up here (not root, tools missing), unless
``COMPOSE_TEST_REQUIRED=1`` (``.ci/run`` sets it once the tools are installed): then that is a failure.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.compose.engine import (
    LONG_RUNNING,
    ONE_SHOT,
    ROOT,
    STANDINS,
    ComposeProject,
    Engine,
    Stack,
    compose_command,
    missing_prerequisites,
    run,
)

REQUIRED_ENV = "COMPOSE_TEST_REQUIRED"
SECRETS = (
    "POSTGRES_PASSWORD",
    "ORDERS_OWNER_PASSWORD",
    "ORDERS_APP_PASSWORD",
    "INVOICES_OWNER_PASSWORD",
    "INVOICES_APP_PASSWORD",
    "REDIS_PASSWORD",
    "SECRET_KEY",
    "MESSAGE_SIGNING_KEY",
)
"""The .env secrets made fresh for each stack (API_KEYS and FLOWER_BASIC_AUTH have shapes of their own)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))  # compose publishes on every interface
        port: int = probe.getsockname()[1]
        return port


REPORT = pytest.StashKey[list[str]]()


def _report(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(REPORT, []).append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The stack's timings and notes (image size, endpoints not scraped) at the end of every run."""
    lines = config.stash.get(REPORT, [])
    if lines:
        terminalreporter.section("compose")
        for line in lines:
            terminalreporter.write_line(line)


def _images(output: str) -> dict[str, str]:
    """The KEY=image lines build.sh prints last."""
    pairs = (line.split("=", 1) for line in output.splitlines() if "=" in line)
    return {key: value for key, value in pairs if key.endswith("_IMAGE")}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = missing_prerequisites()
    if reason is not None:
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(f"{REQUIRED_ENV}=1 but no engine can be set up: {reason}")
        pytest.skip(f"no Docker engine can be set up here: {reason}")

    root = tmp_path_factory.mktemp("compose")
    engine = Engine(root / "engine")
    command = compose_command(engine.docker)
    assert command is not None
    name = f"oo-{uuid.uuid4().hex[:8]}"
    env_file = root / ".env"
    timings: dict[str, float] = {}
    notes: list[str] = []
    started = time.monotonic()
    project: ComposeProject | None = None
    try:
        mark = time.monotonic()
        engine.start()
        timings["engine start"] = time.monotonic() - mark

        mark = time.monotonic()
        built = run([str(STANDINS)], env=engine.env(), timeout=600)
        how = (
            "cold: debootstrap"
            if "debootstrap" in built.stderr
            else "built"
            if "built" in built.stderr
            else "cached"
        )
        timings[f"stand-ins ({how})"] = time.monotonic() - mark
        images = _images(built.stdout)
        assert set(images) == {"PYTHON_IMAGE", "POSTGRES_IMAGE", "REDIS_IMAGE"}, built.stdout

        api_key = "osk_" + secrets.token_urlsafe(32)
        port = free_port()
        # The secrets come from an .env file, as in production; only the image names differ from .env.example.
        # Hex: no placeholder word can turn up in a random password by chance.
        env_file.write_text(
            "".join(
                f"{key}={value}\n"
                for key, value in {
                    **{name: secrets.token_hex(24) for name in SECRETS},
                    "API_KEYS": api_key,
                    "FLOWER_BASIC_AUTH": f"ops:{secrets.token_hex(24)}",
                    "API_PORT": str(port),
                    **images,
                }.items()
            ),
            encoding="utf-8",
        )
        project = ComposeProject(engine, name, env_file, ROOT, command)

        mark = time.monotonic()
        project.run("build", "migrate", timeout=600)
        timings["app image build"] = time.monotonic() - mark

        mark = time.monotonic()
        make_up = ["make", "-s", "-C", str(ROOT), "up", f"COMPOSE_PROJECT={name}", f"ENV_FILE={env_file}"]
        run(make_up, env=engine.env(), timeout=600)
        timings["make up"] = time.monotonic() - mark
        project.wait_until_healthy(LONG_RUNNING, ONE_SHOT, timeout=240)
        timings["make up to healthy"] = time.monotonic() - mark

        size = engine.run_docker("image", "inspect", "--format", "{{.Size}}", "order-outbox:local").stdout
        notes.append(f"app image order-outbox:local: {int(size) / 1e6:.0f} MB")
        yield Stack(project, f"http://127.0.0.1:{port}", api_key, timings=timings, notes=notes)
    finally:
        try:
            if project is not None:
                mark = time.monotonic()
                project.down()
                timings["down -v"] = time.monotonic() - mark
        finally:
            engine.stop()
            timings["total"] = time.monotonic() - started
            summary = ", ".join(f"{what} {seconds:.0f} s" for what, seconds in timings.items())
            _report(request.config, f"stack {name}: {summary}")
            for note in notes:
                _report(request.config, f"stack {name}: {note}")
