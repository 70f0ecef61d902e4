"""An asyncio + aiohttp load generator: cheap enough per request to leave the CPU to the server.

Every other request carries an ``Idempotency-Key`` (the naive app ignores it; the product claims it).

Closed loop (fixed concurrency, as fast as answers come) measures throughput; open loop (requests
sent on a fixed schedule, whatever the answers) measures latency without coordinated omission.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
import zlib
from dataclasses import dataclass, field

import aiohttp

from bench.orders import order_body

__all__ = ["LoadResult", "closed_loop", "open_loop"]


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    warmup_ok: int = 0
    offered_rps: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def placed(self) -> int:
        """Every order the server accepted, warm-up included."""
        return self.ok + self.warmup_ok

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class _Poster:
    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str, tag: str, seed: int) -> None:
        self._session = session
        self._url = url
        self._auth = f"Bearer {api_key}"
        self._tag = tag
        self._rng = random.Random(seed)
        self._count = 0

    async def post(self, result: LoadResult, record: bool = True) -> None:
        body = json.dumps(order_body(self._rng, self._tag))
        headers = {"Content-Type": "application/json", "Authorization": self._auth}
        self._count += 1
        if self._count % 2:  # half the requests: both paths of POST /orders are priced
            headers["Idempotency-Key"] = str(uuid.uuid4())
        started = time.perf_counter()
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.error(type(exc).__name__)
            return
        if not record:
            result.warmup_ok += status == 201
            return
        result.sent += 1
        if status == 201:
            result.ok += 1
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
        else:
            result.error(str(status))


def _session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def _closed(
    url: str, api_key: str, tag: str, concurrency: int, seconds: float, warmup: float
) -> LoadResult:
    result = LoadResult()
    async with _session(concurrency) as session:
        poster = _Poster(session, url, api_key, tag, seed=zlib.crc32(tag.encode()))
        warm_until = time.perf_counter() + warmup
        while time.perf_counter() < warm_until:
            await asyncio.gather(*(poster.post(result, record=False) for _ in range(concurrency)))
        started = time.perf_counter()
        stop_at = started + seconds

        async def user() -> None:
            while time.perf_counter() < stop_at:
                await poster.post(result)

        await asyncio.gather(*(user() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def closed_loop(
    url: str, api_key: str, tag: str, concurrency: int, seconds: float, warmup: float = 1.0
) -> LoadResult:
    """``concurrency`` clients each POST again as soon as answered, for ``seconds`` after a warm-up."""
    return asyncio.run(_closed(url, api_key, tag, concurrency, seconds, warmup))


async def _open(url: str, api_key: str, tag: str, rate: float, seconds: float) -> LoadResult:
    result = LoadResult()
    total = int(rate * seconds)
    async with _session(512) as session:
        poster = _Poster(session, url, api_key, tag, seed=zlib.crc32(tag.encode()))
        started = time.perf_counter()
        pending: set[asyncio.Task[None]] = set()
        for index in range(total):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(poster.post(result))
            pending.add(task)
            task.add_done_callback(pending.discard)
        result.offered_rps = total / max(time.perf_counter() - started, 1e-9)
        if pending:
            await asyncio.wait(pending)
        result.seconds = time.perf_counter() - started
    return result


def open_loop(url: str, api_key: str, tag: str, rate: float, seconds: float) -> LoadResult:
    """POST at a fixed ``rate`` per second for ``seconds``, not waiting for answers before the next."""
    return asyncio.run(_open(url, api_key, tag, rate, seconds))
