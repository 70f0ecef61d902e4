"""Hosts as network namespaces, for tests that cut one host's route to one server.

The root namespace is the server host: a dummy interface (ifb where there is no dummy driver) holds
one address per server, so that a route to one can be cut while the other stays reachable. Every
other host is a namespace joined to the root by a veth pair (a /30) with its default route through
the root's end. All addresses lie in
one free /22 of ``SITE``; names end with a random suffix, so runs never meet. ``close`` removes
everything made (processes left in the namespaces, namespaces, veths, the dummy interface), each step
whatever the others did.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SITE", "Host", "Network", "NetworkError", "unavailable", "unclaimed_port"]

SITE = ipaddress.ip_network("10.231.0.0/16")
"""The only addresses this module ever assigns or routes to."""
BLOCKS = SITE.num_addresses // 1024
"""/22s in ``SITE``: one per network; its first /24 serves, the next three are links to hosts."""
MAX_HOSTS = 3


class NetworkError(RuntimeError):
    """An ``ip`` command failed."""


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or ``None``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({package})"
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        return f"ip netns is unavailable: {result.stderr.strip()}"
    return None


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def unclaimed_port(address: str) -> int:
    """A port free on ``address`` and below the ephemeral range: nothing that binds port 0 (a client, a
    server on ``METRICS_PORT=0`` of a test running beside) can take it before a server listens on it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(low // 2, low), 50):
        with socket.socket() as sock:
            try:
                sock.bind((address, port))
            except OSError:
                continue
            return port
    raise NetworkError(f"no free port on {address} below {low}")


def _free_block() -> int:
    """A /22 of ``SITE`` with no address on this machine's root namespace yet (as its third octet)."""
    used = set()
    for line in ip("-o", "-4", "addr", "show").splitlines():
        address = ipaddress.ip_interface(line.split()[3]).ip
        if address in SITE:
            used.add(int(address) >> 10 & (BLOCKS - 1))
    free = [block for block in range(BLOCKS) if block not in used]
    if not free:
        raise NetworkError(f"no free /22 left in {SITE}")
    return random.choice(free) * 4


@dataclass(frozen=True)
class Host:
    """A namespace with one link to the server host."""

    namespace: str
    address: str
    """Its end of the link: the client address the servers see."""

    def command(self, command: list[str]) -> list[str]:
        """``command`` run on this host (``ip netns exec`` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.namespace, *command]


@dataclass
class Network:
    """A server host (the root namespace) and up to ``MAX_HOSTS`` hosts linked to it; ``close`` undoes it."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    block: int = field(default_factory=_free_block)
    hosts: list[Host] = field(default_factory=list)
    _undo: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def dummy(self) -> str:
        return f"obsvc{self.suffix}"

    def serve(self, count: int) -> list[str]:
        """``count`` addresses on the server host (the root namespace), for servers to listen on."""
        try:
            ip("link", "add", self.dummy, "type", "dummy")
        except NetworkError:  # no dummy driver (some containers): an ifb device holds local addresses alike
            ip("link", "add", self.dummy, "type", "ifb")
        self._undo.append(("link", "del", self.dummy))
        addresses = [f"{SITE.network_address + (self.block << 8) + n}" for n in range(1, count + 1)]
        for address in addresses:
            ip("addr", "add", f"{address}/32", "dev", self.dummy)
        ip("link", "set", self.dummy, "up")
        return addresses

    def add_host(self) -> Host:
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise NetworkError(f"at most {MAX_HOSTS} hosts per network")
        namespace, outer, inner = (f"{kind}{index}{self.suffix}" for kind in ("obr", "obv", "obh"))
        link = SITE.network_address + ((self.block + index) << 8)
        gateway, address = f"{link + 1}", f"{link + 2}"
        ip("netns", "add", namespace)
        self._undo.append(("netns", "del", namespace))
        ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", namespace)
        self._undo.append(("link", "del", outer))  # gone with the namespace already, unless that failed
        ip("addr", "add", f"{gateway}/30", "dev", outer)
        ip("link", "set", outer, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "addr", "add", f"{address}/30", "dev", inner)
        ip("-n", namespace, "link", "set", inner, "up")
        ip("-n", namespace, "route", "add", "default", "via", gateway)
        host = Host(namespace, address)
        self.hosts.append(host)
        return host

    def cut(self, host: Host, address: str) -> None:
        """Every packet ``host`` sends to ``address`` is dropped, and nobody is told: a dead path.

        Established connections time out, new ones too (their SYNs go unanswered), as through a
        partition; a missing route would refuse new connections at once. The rule lives in the
        host's own namespace.
        """
        _iptables(host, "-A", address)

    def restore(self, host: Host, address: str) -> None:
        _iptables(host, "-D", address)

    def close(self) -> None:
        """Remove everything, in reverse; a step that fails does not stop the others. Raises at the end."""
        for host in self.hosts:
            _kill_left_in(host.namespace)
        errors = []
        for args in reversed(self._undo):
            try:
                ip(*args)
            except NetworkError as error:
                if "Cannot find device" not in str(error):
                    errors.append(str(error))
            except subprocess.TimeoutExpired as error:
                errors.append(str(error))
        self._undo.clear()
        if errors:
            raise NetworkError("; ".join(errors))


def _iptables(host: Host, action: str, address: str) -> None:
    command = host.command(["iptables", "-w", "5", action, "OUTPUT", "-d", f"{address}/32", "-j", "DROP"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    if result.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {result.stderr.strip()}")


def _kill_left_in(namespace: str) -> None:
    """SIGKILL what still runs in ``namespace`` (only processes a test started there): a namespace
    whose name is deleted lives on while a process holds it."""
    try:
        pids = ip("netns", "pids", namespace).split()
    except NetworkError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
