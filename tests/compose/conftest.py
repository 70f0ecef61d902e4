"""The compose stacks: one private engine with the stand-in images and the app image per session, and on it
one ``make up`` per module: the default shape (``stack``) and the RabbitMQ shape (``rabbitmq_stack``).

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.compose.engine import (
    LONG_RUNNING,
    ONE_SHOT,
    RABBITMQ_FILES,
    RABBITMQ_LONG_RUNNING,
    ROOT,
    STANDINS,
    ComposeProject,
    Engine,
    EngineError,
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


@dataclass
class Prepared:
    """The session's engine with the stand-ins loaded and the app image built: what every stack runs on."""

    engine: Engine
    command: list[str]
    images: dict[str, str]
    root: Path
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def compose_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prepared]:
    reason = missing_prerequisites()
    if reason is not None:
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(f"{REQUIRED_ENV}=1 but no engine can be set up: {reason}")
        pytest.skip(f"no Docker engine can be set up here: {reason}")

    root = tmp_path_factory.mktemp("compose")
    engine = Engine(root / "engine")
    command = compose_command(engine.docker)
    assert command is not None
    timings: dict[str, float] = {}
    started = time.monotonic()
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
        assert set(images) == {"PYTHON_IMAGE", "POSTGRES_IMAGE", "REDIS_IMAGE", "RABBITMQ_IMAGE"}, (
            built.stdout
        )

        prepared = Prepared(engine, command, images, root, timings)
        # Built once by compose itself (a plain `docker build` would not share its layer cache), so both
        # stacks' `make up --build` find every layer cached. The project is never started.
        mark = time.monotonic()
        builder, _ = _new_stack(prepared, broker="redis")
        builder.project.run("build", "migrate", timeout=600)
        timings["app image build"] = time.monotonic() - mark
        yield prepared
    finally:
        engine.stop()
        timings["engine total"] = time.monotonic() - started
        summary = ", ".join(f"{what} {seconds:.0f} s" for what, seconds in timings.items())
        _report(request.config, f"engine: {summary}")


def _new_stack(prepared: Prepared, *, broker: str) -> tuple[Stack, list[str]]:
    """A unique project name and a fresh .env for ``make up BROKER=…``; the long-running services to await."""
    engine = prepared.engine
    name = f"oo-{broker[:3]}-{uuid.uuid4().hex[:8]}"
    env_file = prepared.root / f"{name}.env"
    api_key = "osk_" + secrets.token_urlsafe(32)
    port = free_port()
    passwords = (*SECRETS, "RABBITMQ_PASSWORD") if broker == "rabbitmq" else SECRETS
    # The secrets come from an .env file, as in production; only the image names differ from .env.example.
    # Hex: no placeholder word can turn up in a random password by chance.
    env_file.write_text(
        "".join(
            f"{key}={value}\n"
            for key, value in {
                **{secret: secrets.token_hex(24) for secret in passwords},
                "API_KEYS": api_key,
                "FLOWER_BASIC_AUTH": f"ops:{secrets.token_hex(24)}",
                "API_PORT": str(port),
                **prepared.images,
            }.items()
        ),
        encoding="utf-8",
    )
    files = RABBITMQ_FILES if broker == "rabbitmq" else ()
    services = RABBITMQ_LONG_RUNNING if broker == "rabbitmq" else LONG_RUNNING
    project = ComposeProject(engine, name, env_file, ROOT, prepared.command, files=files)
    return Stack(project, f"http://127.0.0.1:{port}", api_key), list(services)


@contextmanager
def _running(request: pytest.FixtureRequest, prepared: Prepared, broker: str) -> Iterator[Stack]:
    stack, services = _new_stack(prepared, broker=broker)
    project = stack.project
    started = time.monotonic()
    try:
        mark = time.monotonic()
        make_up = [
            "make", "-s", "-C", str(ROOT), "up", f"BROKER={broker}", f"COMPOSE_PROJECT={project.name}",
            f"ENV_FILE={project.env_file}",
        ]  # fmt: skip
        run(make_up, env=prepared.engine.env(), timeout=600)
        stack.timings["make up"] = time.monotonic() - mark
        project.wait_until_healthy(services, ONE_SHOT, timeout=240)
        stack.timings["make up to healthy"] = time.monotonic() - mark
        yield stack
    finally:
        try:
            mark = time.monotonic()
            project.down()
            stack.timings["down -v"] = time.monotonic() - mark
        except EngineError as exc:  # the engine is stopped at the session's end anyway
            stack.notes.append(f"down -v failed: {exc}")
        finally:
            stack.timings["total"] = time.monotonic() - started
            summary = ", ".join(f"{what} {seconds:.0f} s" for what, seconds in stack.timings.items())
            _report(request.config, f"stack {project.name} (BROKER={broker}): {summary}")
            for note in stack.notes:
                _report(request.config, f"stack {project.name}: {note}")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, compose_engine: Prepared) -> Iterator[Stack]:
    """``make up``: docker-compose.yml, Redis as the broker."""
    with _running(request, compose_engine, "redis") as running:
        size = compose_engine.engine.run_docker(
            "image", "inspect", "--format", "{{.Size}}", "order-outbox:local"
        ).stdout
        running.notes.append(f"app image order-outbox:local: {int(size) / 1e6:.0f} MB")
        yield running


@pytest.fixture(scope="module")
def rabbitmq_stack(request: pytest.FixtureRequest, compose_engine: Prepared) -> Iterator[Stack]:
    """``make up BROKER=rabbitmq``: docker-compose.rabbitmq.yml on top, RabbitMQ as the broker."""
    with _running(request, compose_engine, "rabbitmq") as running:
        yield running
