"""Where each process of the running product spends its CPU: py-spy over a saturation round.

``make bench``'s profile scenario (or ``python -m bench.spy [SECONDS]`` alone) starts the product
stack, samples every process (gunicorn and Celery children included) with ``py-spy record --gil
--format raw`` while a closed-loop load runs, and writes ``bench/results/spy_<service>.txt``: the CPU
ms per order the service used, then each function's share of the GIL-holding samples (inclusive, then
self). Only samples holding the GIL count, so waiting on a socket (psycopg, Redis) is not charged.
Unlike an in-process profiler this includes gunicorn, Celery, kombu and the pool plumbing as they run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load import closed_loop
from bench.scenarios import Variant
from bench.stack import API_KEY, StackFactory

__all__ = ["main", "spy_profile", "summarize_raw"]

RESULTS = Path(__file__).parent / "results"
RATE = 250
_IDLE = ("select (", "poll (", "wait (threading.py", "sleep (")
_PROCESS = re.compile(r"^process \d+:")


def _frame(raw_frame: str) -> str:
    """``function (/…/site-packages/pkg/file.py:123)`` → ``function (pkg/file.py)``: lines merged."""
    function, _, where = raw_frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    short = path.split("site-packages/")[-1].split(f"{Path(__file__).resolve().parents[1]}/")[-1]
    return f"{function} ({short})"


def summarize_raw(raw: str, limit: int = 60) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """From py-spy's raw format: busy samples, the top functions inclusive, and the top by self time.

    A sample whose innermost frame waits (select, poll, a condition, a sleep) is idle and not counted.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if not _PROCESS.match(f)]
        if not frames or frames[-1].startswith(_IDLE):
            continue
        busy += int(count)
        own[frames[-1]] += int(count)
        for frame in dict.fromkeys(frames):
            inclusive[frame] += int(count)
    return busy, inclusive.most_common(limit), own.most_common(limit // 2)


def spy_profile(
    factory: StackFactory, seconds: float, out: Path = RESULTS, prefix: str = "spy_"
) -> dict[str, Any]:
    """Profile every process of a product stack under a closed-loop load; write and return the summary
    (``out/<prefix><service>.txt``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    variant = Variant("product", factory.stack("spy").start_product())
    scratch = Path(tempfile.mkdtemp(prefix="bench-spy-"))
    summary: dict[str, Any] = {}
    try:
        variant.run("warm-", lambda url, tag: closed_loop(url, API_KEY, tag, 8, 1.0, 0.5))
        spies = {}
        for name in variant.stack.services:
            root = variant.stack.processes(name)[0].pid
            command = [
                spy, "record", "--pid", str(root), "--subprocesses", "--rate", str(RATE), "--nonblocking",
                "--gil", "--format", "raw", "--duration", str(int(seconds) + 2),
                "--output", str(scratch / f"{name}.raw"),
            ]  # fmt: skip
            spies[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, figures = variant.run("spy-", lambda url, tag: closed_loop(url, API_KEY, tag, 16, seconds, 0.0))
        for process in spies.values():
            process.wait(timeout=120)
        for name in spies:
            busy, top, own = summarize_raw((scratch / f"{name}.raw").read_text())
            cpu_ms = figures.get(f"cpu_ms_{name}", 0.0)
            lines = [
                f"{name}: {cpu_ms:.2f} CPU ms/order over {figures['placed']:.0f} orders;"
                f" {busy} GIL-holding samples at {RATE} Hz. Share of those samples, inclusive:",
                *(f"{100 * n / max(busy, 1):5.1f}%  {frame}" for frame, n in top),
                "self time:",
                *(f"{100 * n / max(busy, 1):5.1f}%  {frame}" for frame, n in own),
            ]
            (out / f"{prefix}{name}.txt").write_text("\n".join(lines) + "\n")
            summary[name] = {
                "cpu_ms_per_order": cpu_ms,
                "samples": busy,
                "top_inclusive": [[frame, round(100 * n / max(busy, 1), 1)] for frame, n in top[:30]],
            }
        summary["cpu_ms"] = {k: v for k, v in figures.items() if k.startswith("cpu_ms")}
    finally:
        variant.close()
        variant.stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    factory = StackFactory(
        os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        RESULTS / "spy-logs",
    )
    try:
        summary = spy_profile(factory, seconds)
    finally:
        factory.close()
    print({k: round(v, 2) for k, v in summary["cpu_ms"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
