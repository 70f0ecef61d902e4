"""A three-node RabbitMQ cluster on this machine, for tests that SIGKILL its nodes.

Each node has its own name, ports and directories under ``root``; all share one Erlang cookie (in
``root``, which is the nodes' and the CLI's ``HOME``) and the machine's epmd. The machine's own RabbitMQ
(``rabbit@localhost``, port 5672) is never touched: nothing here reads ``/etc/rabbitmq`` (the env file
and config are the cluster's own) and every ``rabbitmqctl`` names its node with ``-n``.

A node runs in the foreground as a child of this process (its own session, output in ``node.log``); its
Erlang VM's OS pid comes from ``RABBITMQ_PID_FILE``. ``kill`` is ``kill -9`` of that pid, a crash;
``stop`` kills every node and removes ``root``, whatever state the cluster is in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.processes import free_port
from harness.rabbitmqctl import broker_password
from harness.waiting import wait_until

RABBITMQ_BIN = Path(os.environ.get("RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
"""The server's own scripts: ``/usr/sbin``'s wrappers switch to the ``rabbitmq`` user and its home."""
HOST = "localhost"
"""The host part of the node names (short names; ``/etc/hosts`` resolves it to loopback)."""
NODE_CONFIG = """\
listeners.tcp.default = 127.0.0.1:{port}
log.console = false
log.file.level = info
disk_free_limit.absolute = 50MB
"""
"""Only loopback. The AMQP port is also in the env (RABBITMQ_NODE_PORT)."""
CTL_TIMEOUT = 60.0
"""Any one ``rabbitmqctl`` call (its own ``--timeout`` where it has one is shorter)."""
CTL_DIST_PORTS = range(35672, 35683)
"""Where every ``rabbitmqctl`` of the machine listens while it runs: no node of ours may take one."""


def rabbitmq_available() -> bool:
    return (RABBITMQ_BIN / "rabbitmq-server").exists() and (RABBITMQ_BIN / "rabbitmqctl").exists()


def _read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _vm_of(pid: int, node: str) -> bool:
    """Whether ``pid`` is still the VM started as ``node`` (a pid file may outlive its process)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"RABBITMQ_NODENAME={node}".encode() in environ


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child not yet reaped) still answers signal 0: it is dead all the same.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class RabbitNode:
    """One node: ``obt1-<suffix>@localhost`` with its AMQP and distribution ports and its folder."""

    name: str
    directory: Path
    port: int
    dist_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None
    """The Erlang VM (beam.smp) of the current run, from ``RABBITMQ_PID_FILE``."""

    @property
    def node(self) -> str:
        return f"{self.name}@{HOST}"

    def url(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}//"

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def kill_vm(self) -> None:
        """SIGKILL the VM if it still runs as this node (its pid, or the pid file's, never a reused pid)."""
        for pid in {self.pid, _read_pid(self.pid_file)} - {None}:
            assert pid is not None
            if _pid_alive(pid) and _vm_of(pid, self.node):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def env(self, home: Path) -> dict[str, str]:
        """The server's and the CLI's environment: nothing inherited from another RabbitMQ's settings."""
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_")) and k not in {"NODENAME", "HOME"}
        }
        return {
            **inherited,
            "HOME": str(home),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            # Distribution on loopback only, as the machine's node has it.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }


@dataclass
class RabbitCluster:
    """Three nodes clustered by ``join_cluster``; quorum queues declared on it get a member on each."""

    root: Path
    size: int = 3
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    nodes: list[RabbitNode] = field(default_factory=list)
    user: str = "pipeline"
    password: str = field(default_factory=broker_password)
    """The only user (``guest`` is deleted): a strong password, as the services require of a broker URL."""
    timings: list[tuple[str, float]] = field(default_factory=list)
    """Each step (start, join, user, every restart and election waited for) and its seconds, in order."""

    def timing_line(self) -> str:
        return ", ".join(f"{step} {seconds:.1f} s" for step, seconds in self.timings)

    def url(self, nodes: list[RabbitNode] | None = None) -> str:
        """kombu's failover form: every node (or ``nodes``), in order; a client moves on when one fails."""
        return ";".join(node.url(self.user, self.password) for node in nodes or self.nodes)

    def node(self, name: str) -> RabbitNode:
        """A node by its short name (``obt1-…``) or its full one (``obt1-…@localhost``)."""
        for node in self.nodes:
            if name in {node.name, node.node}:
                return node
        raise KeyError(name)

    def live(self) -> list[RabbitNode]:
        return [node for node in self.nodes if node.running]

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings.append((step, round(time.monotonic() - started, 1)))

    # --- start, cluster, stop

    def start(self, timeout: float = 60) -> RabbitCluster:
        """Start every node at once, wait for each, then join the others to the first."""
        with self.timed("start"):
            self._prepare()
            try:
                for node in self.nodes:
                    self._launch(node)
                for node in self.nodes:
                    self._await_startup(node, timeout)
                with self.timed("join"):
                    first = self.nodes[0]
                    for node in self.nodes[1:]:
                        self.ctl(node, "stop_app")
                        self.ctl(node, "reset")
                        self.ctl(node, "join_cluster", first.node)
                        self.ctl(node, "start_app")
                    for node in self.nodes:
                        self._await_clustered(node, timeout)
                with self.timed("user"):  # users live in the cluster's database: one node is enough
                    first = self.nodes[0]
                    self.ctl(first, "add_user", self.user, self.password)
                    self.ctl(first, "set_permissions", "-p", "/", self.user, ".*", ".*", ".*")
                    self.ctl(first, "delete_user", "guest")
            except BaseException:
                self.stop()
                raise
        return self

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("# this cluster's own: not /etc/rabbitmq's\n")
        taken: set[int] = set()
        for index in range(1, self.size + 1):
            name = f"obt{index}-{self.suffix}"
            directory = self.root / name
            (directory / "log").mkdir(parents=True, exist_ok=True)
            node = RabbitNode(name, directory, self._port(taken), self._port(taken))
            (directory / "enabled_plugins").write_text("[].\n")
            (directory / "rabbitmq.conf").write_text(NODE_CONFIG.format(port=node.port))
            self.nodes.append(node)

    @staticmethod
    def _port(taken: set[int]) -> int:
        port = free_port()
        while port in taken or port in CTL_DIST_PORTS:
            port = free_port()
        taken.add(port)
        return port

    def _launch(self, node: RabbitNode) -> None:
        node.pid_file.unlink(missing_ok=True)
        node.pid = None
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=node.env(self.root),
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _await_startup(self, node: RabbitNode, timeout: float) -> None:
        def pid() -> int | None:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.node} exited ({node.process.returncode}):\n{self.tail(node)}")
            return _read_pid(node.pid_file)

        node.pid = wait_until(pid, timeout=timeout, interval=0.1, message=f"{node.node}'s pid file")
        self.ctl(node, "await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)

    def _await_clustered(self, node: RabbitNode, timeout: float) -> None:
        """Until ``node`` sees every node of the cluster running (its own view, from cluster_status)."""
        everyone = {n.node for n in self.nodes}

        def clustered() -> bool:
            try:
                return set(self.cluster_status(node).get("running_nodes", ())) >= everyone
            except (RuntimeError, subprocess.TimeoutExpired):
                return False

        wait_until(
            clustered,
            timeout=timeout,
            interval=0.5,
            message=f"{node.node} to see {sorted(everyone)} running",
        )

    def stop(self) -> None:
        """SIGKILL every node (the VM and its wrapper's session), reap them, remove every folder."""
        for node in self.nodes:
            node.kill_vm()
            if node.process is not None:
                if node.process.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(node.process.pid, signal.SIGKILL)
                with suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
            node.pid = None
        for node in self.nodes:
            if node.process is not None:
                # The VM is the wrapper's child, so its session: anything left there (erl_child_setup...).
                with suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- faults

    def kill(self, node: RabbitNode | str) -> float:
        """``kill -9`` of the node's Erlang VM; returns when it is gone (the seconds that took)."""
        node = self.node(node) if isinstance(node, str) else node
        started = time.monotonic()
        assert node.pid is not None, f"{node.node} was never started"
        assert node.running, f"{node.node} is not running"
        pid = node.pid
        os.kill(pid, signal.SIGKILL)
        if node.process is not None:
            node.process.wait(timeout=10)  # the wrapper exits once its VM is gone
        wait_until(lambda: not _pid_alive(pid), timeout=10, message=f"{node.node}'s VM ({pid}) to die")
        node.pid = None
        return time.monotonic() - started

    def restart(self, node: RabbitNode | str, timeout: float = 60) -> float:
        """Start a killed node on its own data; returns once it runs and sees every other node running."""
        node = self.node(node) if isinstance(node, str) else node
        assert not node.running, f"{node.node} is still running"
        started = time.monotonic()
        with self.timed(f"restart {node.name}"):
            self._launch(node)
            self._await_startup(node, timeout)
            self._await_clustered(node, timeout)  # it reached every other node (they see it the same way)
        return time.monotonic() - started

    # --- questions

    def ctl(self, node: RabbitNode, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n <node> …`` with the cluster's cookie; its stdout, or an error with its output."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.node, *args],
            env=node.env(self.root),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node.node} {' '.join(args)} failed ({result.returncode}):"
                f" {result.stdout}{result.stderr}"
            )
        return result.stdout

    def cluster_status(self, node: RabbitNode) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.ctl(node, "cluster_status", "--formatter", "json"))
        return status

    def queues(self, vhost: str = "/") -> list[dict[str, Any]]:
        """Every queue of ``vhost`` with its type, leader and members, as a live node reports them."""
        errors = []
        for node in self.live():
            try:
                output = self.ctl(
                    node, "list_queues", "-p", vhost, "name", "type", "leader", "members", "online",
                    "messages", "--formatter", "json", "--quiet", "--timeout", "20",
                    timeout=30,
                )  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                errors.append(str(error))
                continue
            rows: list[dict[str, Any]] = json.loads(output)
            return rows
        raise RuntimeError(f"no live node answered list_queues: {errors}")

    def queue(self, name: str, vhost: str = "/") -> dict[str, Any]:
        for row in self.queues(vhost):
            if row["name"] == name:
                return row
        raise KeyError(f"no queue {name!r} in vhost {vhost!r}")

    def queue_leader(self, name: str, vhost: str = "/") -> RabbitNode:
        """The node that leads the quorum queue ``name`` now."""
        return self.node(str(self.queue(name, vhost)["leader"]))

    def wait_leader_elected(self, name: str, vhost: str = "/", timeout: float = 60) -> RabbitNode:
        """Until ``name`` has a leader on a live node (after its leader died); that node."""
        started = time.monotonic()

        def elected() -> RabbitNode | None:
            try:
                leader = self.queue_leader(name, vhost)
            except (KeyError, RuntimeError):
                return None
            return leader if leader.running else None

        leader = wait_until(elected, timeout=timeout, interval=0.25, message=f"a live leader of {name}")
        assert leader is not None  # wait_until returns a truthy value or raises
        self.timings.append((f"{name} led by {leader.name}", round(time.monotonic() - started, 1)))
        return leader

    def connections(self) -> dict[str, int]:
        """How many client connections each node holds (by the node's AMQP port in the connection's name)."""
        by_port = {node.port: node.name for node in self.nodes}
        counts = dict.fromkeys(by_port.values(), 0)
        live = self.live()
        assert live, "no node is running"
        output = self.ctl(live[0], "list_connections", "name", "--formatter", "json", "--quiet")
        for row in json.loads(output):
            port = int(str(row["name"]).rsplit(":", 1)[1])  # "127.0.0.1:54348 -> 127.0.0.1:35073"
            if port in by_port:
                counts[by_port[port]] += 1
        return counts

    def wait_members_online(self, name: str, vhost: str = "/", timeout: float = 60) -> None:
        """Until every node's member of the quorum queue ``name`` is online (a restarted one rejoined)."""
        everyone = {node.node for node in self.nodes}

        def online() -> bool:
            try:
                row = self.queue(name, vhost)
            except (KeyError, RuntimeError):
                return False
            return set(row.get("online") or ()) >= everyone and set(row.get("members") or ()) >= everyone

        wait_until(online, timeout=timeout, interval=0.5, message=f"every member of {name} online")

    def tail(self, node: RabbitNode, chars: int = 3000) -> str:
        """The end of the node's console output and of its own log file."""
        parts = []
        for path in (node.log_path, *sorted((node.directory / "log").glob("*.log"))):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)
