"""CPU per ``POST /orders`` in-process: the app on a fresh Postgres database, Redis rate limits, a stored key.

Half the requests carry an ``Idempotency-Key`` (as ``bench.load`` sends them). Prints the mean
``time.process_time()`` per POST (the Flask test client's own work included, the same before and after
a change); ``--profile FILE`` also writes a cProfile of the timed requests.

    .venv/bin/python tools/profile_post.py -n 2000 [--profile var/post.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from flask_outbox.logs import configure_logging

from bench.orders import order_body
from bench.stack import store_api_key
from harness.databases import PostgresFactory
from order_service import create_app
from order_service.extensions import db
from shared.config import Settings

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="timed POSTs (after 200 warm-up ones)")
    parser.add_argument("--profile", help="write a cProfile of the timed POSTs to this file")
    args = parser.parse_args()

    with open(os.devnull, "w") as sink:
        sys.stderr = sink  # log lines are rendered, as in production, then dropped
        configure_logging("INFO", "console")
        _measure(args.n, args.profile)


def _measure(n: int, profile: str | None) -> None:
    factory = PostgresFactory(POSTGRES_URL)
    prefix = f"profile-{uuid.uuid4().hex[:8]}-"
    try:
        pair = factory.fresh_pair()
        key = f"osk_profile_{uuid.uuid4().hex}"
        store_api_key(pair.orders_url, key)
        settings = Settings(
            orders_database_url=pair.orders_url,
            invoices_database_url=pair.invoices_url,
            broker_url=REDIS_URL,
            queue_prefix=prefix,
            rate_limit="1000000 per second",
            var_dir=Path(tempfile.mkdtemp(prefix=prefix)),
        )
        app = create_app(settings)
        client = app.test_client()
        rng = random.Random(7)  # noqa: S311 - reproducible bodies, not secrets
        bodies = [json.dumps(order_body(rng, "cus_")) for _ in range(n + 200)]

        def post(i: int) -> float:
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
            if i % 2:
                headers["Idempotency-Key"] = str(uuid.uuid4())
            started = time.process_time()
            response = client.post("/orders", data=bodies[i], headers=headers)
            spent = time.process_time() - started
            assert response.status_code == 201, response.get_data(as_text=True)
            return spent

        for i in range(200):
            post(n + i)
        profiler = cProfile.Profile(time.process_time)  # CPU, not wall time
        if profile:
            profiler.enable()
        spent = [post(i) for i in range(n)]
        if profile:
            profiler.disable()
            profiler.dump_stats(profile)
        with app.app_context():
            db.engine.dispose()
        plain, keyed = spent[0::2], spent[1::2]
        print(
            f"n={n} CPU ms/POST mean {statistics.fmean(spent) * 1e3:.3f}"
            f" median {statistics.median(spent) * 1e3:.3f}"
            f" | plain {statistics.fmean(plain) * 1e3:.3f}"
            f" | Idempotency-Key {statistics.fmean(keyed) * 1e3:.3f}",
            file=sys.__stdout__,
        )
    finally:
        factory.close()
        client_redis = redis.Redis.from_url(REDIS_URL)
        stale = list(client_redis.scan_iter(match=f"{prefix}*", count=1000))
        if stale:
            client_redis.delete(*stale)
        client_redis.close()


if __name__ == "__main__":
    main()
