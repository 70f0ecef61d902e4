"""Turning a pyinstrument profile into the few lines worth reading: time by package and by function."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

__all__ = ["Hotspots", "package_of", "top"]

_APP_PACKAGES = {"order_service", "invoice_worker", "shared", "bench"}


def package_of(path: str) -> str:
    """Who owns the code at ``path``: a top-level package name, ``stdlib``, or the raw name."""
    parts = PurePath(path).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if rest else "site-packages"
    for part in parts:
        if part in _APP_PACKAGES:
            return part
    if any(p.startswith("python3") for p in parts):
        return "stdlib"
    return PurePath(path).name or path


def top(counter: Counter[str], total: float, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` biggest entries as ``{"name", "seconds", "share"}`` (share of ``total`` in %)."""
    return [
        {
            "name": name,
            "seconds": round(seconds, 4),
            "share": round(100 * seconds / total, 1) if total else 0.0,
        }
        for name, seconds in counter.most_common(limit)
    ]


class Hotspots:
    """Self time of a pyinstrument frame tree, grouped by package and by function."""

    def __init__(self, root: Any) -> None:
        self.total = float(root.time) if root is not None else 0.0
        self.by_package: Counter[str] = Counter()
        self.by_function: Counter[str] = Counter()
        for frame in self._frames(root):
            if frame.is_synthetic or not frame.file_path:
                continue
            seconds = float(frame.total_self_time)
            self.by_package[package_of(frame.file_path)] += seconds
            self.by_function[f"{frame.function} ({frame.file_path_short}:{frame.line_no})"] += seconds

    @staticmethod
    def _frames(root: Any) -> Iterator[Any]:
        stack = [root] if root is not None else []
        while stack:
            frame = stack.pop()
            yield frame
            stack.extend(frame.children)

    def summary(self, limit: int = 10) -> dict[str, Any]:
        return {
            "total_seconds": round(self.total, 3),
            "by_package": top(self.by_package, self.total, limit),
            "by_function": top(self.by_function, self.total, limit),
        }
