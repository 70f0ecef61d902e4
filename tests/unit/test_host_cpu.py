"""The host counts as saturated only when its CPUs were (almost) never idle over the last window."""

from __future__ import annotations

from pathlib import Path

from flask_outbox.host_cpu import HostCpu


class Stat:
    """A ``/proc/stat`` the test writes: cumulative busy and idle ticks, and a clock it moves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.busy = 0
        self.idle = 0
        self.now = 0.0
        self.write()

    def write(self) -> None:
        # user nice system idle iowait irq softirq steal guest guest_nice; iowait counts as idle.
        self.path.write_text(
            f"cpu  {self.busy} 0 0 {self.idle - self.idle // 4} {self.idle // 4} 0 0 0 0 0\n"
        )

    def spend(self, busy: int, idle: int, seconds: float) -> None:
        self.busy += busy
        self.idle += idle
        self.now += seconds
        self.write()


def test_a_window_with_no_idle_time_is_saturated_and_one_with_some_is_not(tmp_path: Path) -> None:
    stat = Stat(tmp_path / "stat")
    cpu = HostCpu(stat.path, window=0.1, clock=lambda: stat.now)
    stat.spend(busy=199, idle=1, seconds=0.1)
    assert cpu.saturated()
    stat.spend(busy=150, idle=50, seconds=0.1)
    assert not cpu.saturated()


def test_the_verdict_holds_until_the_window_is_over(tmp_path: Path) -> None:
    stat = Stat(tmp_path / "stat")
    cpu = HostCpu(stat.path, window=0.1, clock=lambda: stat.now)
    stat.spend(busy=200, idle=0, seconds=0.1)
    assert cpu.saturated()
    stat.spend(busy=0, idle=200, seconds=0.05)  # half a window later: not read again yet
    assert cpu.saturated()
    stat.spend(busy=0, idle=0, seconds=0.05)
    assert not cpu.saturated()


def test_a_host_whose_counters_cannot_be_read_is_never_saturated(tmp_path: Path) -> None:
    now = [0.0]
    cpu = HostCpu(tmp_path / "missing", window=0.1, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 0.2
        assert not cpu.saturated()
    garbled = tmp_path / "garbled"
    garbled.write_text("cpu  a b c\n")
    assert not HostCpu(garbled, window=0.0).saturated()
