"""Where the time goes: pyinstrument over the API request, the relay batch and the worker task.

Run by ``bench.e2e`` as ``python -m bench.profile OUT_DIR COUNT`` in a stack's environment (its own
databases and queue). Each stage runs in-process, so the profile shows the product's code and its
libraries, not the HTTP server or Celery's prefork plumbing (those are priced by the e2e figures).
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyinstrument import Profiler
from sqlalchemy import create_engine, text

from bench.hotspots import Hotspots
from bench.orders import order_body
from bench.stack import API_KEY

__all__ = ["main"]


def _profiled(name: str, out: Path, work: Callable[[], None]) -> dict[str, Any]:
    profiler = Profiler(interval=0.0005)
    profiler.start()
    work()
    session = profiler.stop()
    (out / f"profile_{name}.txt").write_text(profiler.output_text(unicode=True, show_all=False))
    (out / f"profile_{name}.html").write_text(profiler.output_html())
    return Hotspots(session.root_frame()).summary()


def _api(count: int) -> Callable[[], None]:
    from order_service import create_app

    client = create_app().test_client()
    rng = random.Random(5)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def post(n: int) -> None:
        for _ in range(n):
            response = client.post(
                "/orders",
                json=order_body(rng, "prof-"),
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            )
            if response.status_code != 201:
                raise RuntimeError(f"POST /orders answered {response.status_code}: {response.text}")

    post(20)  # warm the pools and caches outside the profile
    return lambda: post(count)


def _relay() -> Callable[[], None]:
    from order_service.relay import build_relay
    from shared.config import Settings
    from shared.db import create_db_engine

    settings = Settings()
    relay = build_relay(settings, create_db_engine(settings.orders_database_url, pool_size=2))
    return lambda: print(f"relay published {relay.drain()}", file=sys.stderr)


def _worker(orders_url: str) -> Callable[[], None]:
    from invoice_worker.tasks import order_placed

    engine = create_engine(orders_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, payload FROM outbox ORDER BY id")).all()
    engine.dispose()

    def run() -> None:
        for row in rows:
            order_placed.apply(kwargs={"payload": row.payload}, task_id=str(row.message_id))

    return run


def main() -> int:
    from shared.config import Settings

    out, count = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings()
    results = {
        "api_request": _profiled("api", out, _api(count)),
        "relay_batch": _profiled("relay", out, _relay()),
        "worker_task": _profiled("worker", out, _worker(settings.orders_database_url)),
        "count": count,
    }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
