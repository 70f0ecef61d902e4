"""A private Docker engine and a Compose client for tests/compose.

``dockerd`` runs as root with its own socket, data root and exec root under a temporary folder
(``DOCKER_HOST`` points at it), so it never meets a system engine; it is stopped by its pid, and the
containerd it started by its process group, even when a test fails. Every call is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "APT_PACKAGES",
    "LONG_RUNNING",
    "ONE_SHOT",
    "RABBITMQ_FILES",
    "RABBITMQ_LONG_RUNNING",
    "ROOT",
    "STANDINS",
    "ComposeProject",
    "Container",
    "Engine",
    "EngineError",
    "Stack",
    "compose_command",
    "docker_client",
    "missing_prerequisites",
]

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "deploy" / "standins" / "build.sh"
LONG_RUNNING = (
    "postgres", "redis", "api", "relay", "relay-2", "worker",
    "invoice-relay", "invoice-relay-2", "order-consumer", "flower",
)  # fmt: skip
ONE_SHOT = ("migrate",)
RABBITMQ_FILES = ("docker-compose.yml", "docker-compose.rabbitmq.yml")
"""``make up BROKER=rabbitmq``'s files: the RabbitMQ shape."""
RABBITMQ_LONG_RUNNING = (*LONG_RUNNING, "rabbitmq")
"""Redis stays in the RabbitMQ shape (the API's rate limits)."""
APT_PACKAGES = "docker.io docker-compose debootstrap"
PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", "ORDER_OUTBOX_CACHE")
"""What the engine and compose inherit from the test's environment: nothing that compose would interpolate."""


class EngineError(RuntimeError):
    """A docker or compose command failed or ran out of time; the message carries its output's tail."""


def docker_client() -> str | None:
    """Debian's client (the same release as its dockerd) before any other ``docker`` on PATH."""
    if Path("/usr/bin/docker").is_file():
        return "/usr/bin/docker"
    return shutil.which("docker")


def compose_command(docker: str | None = None) -> list[str] | None:
    """The Compose v2 plugin if the client has it, else the v1 ``docker-compose``: as ``make up`` picks."""
    docker = docker or shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"],
            capture_output=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 is not None else None


def missing_prerequisites() -> str | None:
    """Why no engine can be set up here, or None."""
    if os.geteuid() != 0:
        return "dockerd and debootstrap need root"
    missing = [tool for tool in ("dockerd", "debootstrap", "make") if shutil.which(tool) is None]
    if docker_client() is None:
        missing.append("docker")
    if not missing and compose_command(docker_client()) is None:
        missing.append("docker-compose")
    if missing:
        return f"{', '.join(missing)} missing: apt-get install -y {APT_PACKAGES} (.ci/run does)"
    return None


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with no stdin, its output captured, within ``timeout`` seconds."""
    try:
        result = subprocess.run(
            list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise EngineError(
            f"{' '.join(argv)} ran over {timeout:.0f} s:\n{_tail(exc.stdout)}\n{_tail(exc.stderr)}"
        ) from exc
    if check and result.returncode != 0:
        raise EngineError(
            f"{' '.join(argv)} exited {result.returncode}:\n{_tail(result.stdout)}\n{_tail(result.stderr)}"
        )
    return result


@dataclass
class Engine:
    """``dockerd`` under ``root`` (data, exec state, socket, log), reached through ``DOCKER_HOST``."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    docker: str = field(default_factory=lambda: docker_client() or "docker")

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
        env["DOCKER_HOST"] = self.host
        env["DOCKER"] = self.docker  # deploy/standins/build.sh
        env["DOCKER_BUILDKIT"] = "0"  # the daemon's legacy builder: no frontend image to pull
        env["CI"] = "true"
        return {**env, **(extra or {})}

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            "dockerd",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--host={self.host}",
            "--default-ulimit=nofile=20000:20000",
        ]
        with self.log_path.open("wb") as log:
            # Its own session: the containerd it starts shares the group, so teardown can end both by id.
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"dockerd exited {self.process.returncode}:\n{self.log_tail()}")
            if run([self.docker, "version"], env=self.env(), timeout=10, check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise EngineError(f"dockerd did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def run_docker(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run([self.docker, *args], env=self.env(), timeout=timeout, check=check)

    def stop(self, timeout: float = 45.0) -> None:
        """SIGTERM dockerd (it stops its containers and containerd), SIGKILL its group if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._end_group(process.pid)
        self._unmount_leftovers()
        shutil.rmtree(self.root / "data", ignore_errors=True)
        shutil.rmtree(self.root / "exec", ignore_errors=True)

    @staticmethod
    def _end_group(pgid: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        sent = signal.SIGTERM
        while True:
            try:
                os.killpg(pgid, sent)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                sent = signal.SIGKILL
            time.sleep(0.2)

    def _unmount_leftovers(self) -> None:
        """Overlay or netns mounts a killed dockerd left under the root, deepest first."""
        prefix = str(self.root) + "/"
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Container:
    service: str
    id: str
    status: str  # running, exited, restarting...
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    exit_code: int
    published: tuple[str, ...]  # host ports bound, "0.0.0.0:8000->8000/tcp"
    networks: tuple[str, ...]  # the compose networks it is on, without the project's prefix: "backend"

    @classmethod
    def of(cls, inspected: Mapping[str, Any]) -> Container:
        state = inspected["State"]
        ports = inspected["NetworkSettings"].get("Ports") or {}
        published = tuple(
            f"{binding['HostIp']}:{binding['HostPort']}->{port}"
            for port, bindings in sorted(ports.items())
            for binding in bindings or ()
        )
        return cls(
            service=inspected["Config"]["Labels"]["com.docker.compose.service"],
            id=inspected["Id"][:12],
            status=state["Status"],
            health=(state.get("Health") or {}).get("Status"),
            exit_code=int(state["ExitCode"]),
            published=published,
            networks=tuple(
                sorted(
                    name.removeprefix(f"{inspected['Config']['Labels']['com.docker.compose.project']}_")
                    for name in inspected["NetworkSettings"].get("Networks") or {}
                )
            ),
        )


@dataclass
class ComposeProject:
    """docker-compose.yml (or ``files``) as one project on the engine, its variables from ``env_file``."""

    engine: Engine
    name: str
    env_file: Path
    project_dir: Path
    command: list[str]
    files: tuple[str, ...] = ()
    """Compose files relative to ``project_dir``, as ``make up`` passes them; none: docker-compose.yml."""

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        chosen = [option for file in self.files for option in ("-f", file)]
        argv = [*self.command, "-p", self.name, *chosen, "--env-file", str(self.env_file), *args]
        return run(argv, env=self.engine.env(), timeout=timeout, check=check, cwd=self.project_dir)

    def exec(self, service: str, *argv: str, timeout: float = 60.0) -> str:
        return self.run("exec", "-T", service, *argv, timeout=timeout).stdout

    def containers(self) -> list[Container]:
        listed = self.engine.run_docker(
            "ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.name}"
        )
        ids = listed.stdout.split()
        if not ids:
            return []
        inspected = json.loads(self.engine.run_docker("inspect", *ids).stdout)
        return sorted((Container.of(item) for item in inspected), key=lambda c: c.service)

    def volumes(self) -> list[str]:
        listed = self.engine.run_docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.name}"
        )
        return listed.stdout.split()

    def wait_until_healthy(self, services: Sequence[str], once: Sequence[str], timeout: float) -> float:
        """Seconds until every long-running service is healthy and every one-shot one exited 0."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            containers = self.containers()
            by_service = {c.service: c for c in containers}
            failed = [
                c for c in containers if c.service in once and c.status == "exited" and c.exit_code != 0
            ]
            if failed:
                raise EngineError(f"{failed} failed:\n{self.logs(*once)}")
            healthy = all(s in by_service and by_service[s].health == "healthy" for s in services)
            done = all(s in by_service and by_service[s].status == "exited" for s in once)
            if healthy and done:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise EngineError(f"not healthy after {timeout:.0f} s: {containers}\n{self.logs(tail=20)}")
            time.sleep(1.0)

    def logs(self, *services: str, tail: int = 40) -> str:
        result = self.run("logs", "--no-color", f"--tail={tail}", *services, timeout=60, check=False)
        return _tail(result.stdout + result.stderr, tail * 10)

    def down(self, timeout: float = 180.0) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=timeout)


@dataclass
class Stack:
    project: ComposeProject
    base_url: str
    api_key: str
    accepted: list[str] = field(default_factory=list)
    """Every order id the API answered 201 for, across the module's tests."""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
