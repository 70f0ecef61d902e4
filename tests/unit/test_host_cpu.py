"""The host counts as saturated only when its CPUs were (almost) never idle over the last window."""

from __future__ import annotations

from flask_outbox.host_cpu import HostCpu


class Host:
    """The busy share psutil would report for the window that ends at each call, and a clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.reads = 0

    def percent(self) -> float:
        self.reads += 1
        return self.busy

    def spend(self, busy: float, seconds: float) -> None:
        self.busy = busy
        self.now += seconds


def test_a_window_with_no_idle_time_is_saturated_and_one_with_some_is_not() -> None:
    host = Host()
    cpu = HostCpu(window=0.1, clock=lambda: host.now, busy_percent=host.percent)
    host.spend(busy=99.5, seconds=0.1)
    assert cpu.saturated()
    host.spend(busy=75.0, seconds=0.1)
    assert not cpu.saturated()


def test_the_verdict_holds_until_the_window_is_over() -> None:
    host = Host()
    cpu = HostCpu(window=0.1, clock=lambda: host.now, busy_percent=host.percent)
    host.spend(busy=100.0, seconds=0.1)
    assert cpu.saturated()
    reads = host.reads
    host.spend(busy=0.0, seconds=0.05)  # half a window later: not read again yet
    assert cpu.saturated()
    assert host.reads == reads
    host.spend(busy=0.0, seconds=0.05)
    assert not cpu.saturated()
