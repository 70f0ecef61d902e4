"""Redis refusing writes for a while (a replica not yet promoted, a full disk, ``min-replicas-to-write``).

Every command that changes a list is refused with an error reply, a ``ResponseError`` that kombu counts
as a channel error, not a lost connection: the worker's ``BRPOP`` is refused, and so are the relay's
publishes. Here Redis refuses writes (``min-replicas-to-write 1`` with no replica: ``NOREPLICAS``)
while orders come in; writable again, every order must be invoiced once by the processes that were
running, none of which may have exited.
"""

from __future__ import annotations

import time

import httpx
import redis

from harness.waiting import wait_until
from tests.fault.harness import Cluster
from tests.fault.orders import bodies

REFUSING_SECONDS = 20.0
"""Long enough for the worker's reconnection loop and the relay's backoff to run several times."""


def test_redis_refusing_writes_for_a_while_loses_no_order_and_ends_no_process(cluster: Cluster) -> None:
    cluster.shipped_defaults = True
    cluster.overrides.update({"RATE_LIMIT": "1000000 per minute"})  # one client posting in a burst
    cluster.start_api()
    relay = cluster.start_relay()
    worker = cluster.start_worker()
    cluster.place_orders(bodies(5, seed=81))
    cluster.wait_settled(5)

    admin = redis.Redis.from_url(cluster.redis.url)
    admin.config_set("min-replicas-to-write", 1)
    try:
        with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
            statuses = [cluster.post_order(client, body).status_code for body in bodies(10, seed=82)]
        assert statuses == [201] * 10  # placing an order never needs the broker
        wait_until(lambda: "NOREPLICAS" in worker.logs(), timeout=30, message="the worker's BRPOP refused")
        time.sleep(REFUSING_SECONDS)
        assert worker.running, f"the worker exited while Redis refused writes:\n{worker.logs()[-3000:]}"
        assert relay.running
    finally:
        admin.config_set("min-replicas-to-write", 0)
        admin.close()
    writable = time.monotonic()

    cluster.settled_after(writable, 15, f"Redis refused writes for {REFUSING_SECONDS:.0f} s")
    assert worker.running
    assert relay.running
