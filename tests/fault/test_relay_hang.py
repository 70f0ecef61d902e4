"""A SIGSTOPped relay: its partitions move to the live relay within the stall bound (shipped 30 s).

Two real relay processes on Postgres, a private Redis and a real worker. One relay is frozen with
SIGSTOP (its kernel still holds its TCP connections open, so the database sees an idle session,
not a dead one): only the live relay retiring it (``pg_terminate_backend`` after
``RELAY_STALL_SECONDS`` without a query) frees its partitions. The frozen relay's health probe
fails (no answer); resumed with SIGCONT, it finds its session gone, reconnects, takes its share
back and publishes nothing twice.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from flask_outbox.partitions import LockKeys, relay_holdings
from sqlalchemy import Engine, create_engine, text

from harness.processes import Service
from harness.waiting import wait_until
from tests.fault.harness import Cluster
from tests.fault.orders import bodies, place_in_process

STALL_BOUND = 30.0  # the shipped RELAY_STALL_SECONDS; this test does not override it
PARTITIONS = 16
KEYS = LockKeys.for_table("outbox")


@contextmanager
def orders_engine(cluster: Cluster) -> Iterator[Engine]:
    engine = create_engine(cluster.databases.orders_url)
    try:
        yield engine
    finally:
        engine.dispose()


def health_port(relay: Service) -> int:
    """The port the relay logged (``METRICS_PORT=0``: each relay picks a free one)."""
    relay.wait_for_log("relay.health_serving")
    for line in relay.logs().splitlines():
        if "relay.health_serving" in line:
            return int(json.loads(line)["port"])
    raise AssertionError(f"{relay.name} logged no health port")


def probe(port: int, path: str = "/healthz") -> tuple[int, str]:
    """(HTTP status, body), or (0, error) when nothing answers within 2 s."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:  # timeout, connection refused
        return 0, repr(error)


def published_total(port: int) -> float:
    status, body = probe(port, "/metrics")
    assert status == 200, body
    line = next(x for x in body.splitlines() if x.startswith("outbox_relay_published_total "))
    return float(line.split()[1])


def holdings(engine: Engine) -> dict[int, frozenset[int]]:
    """Relay process pid → partitions it holds, from the database's own lock table."""
    with engine.connect() as conn:
        found = relay_holdings(conn, KEYS)
    return {int(h.application_name.rsplit(":", 1)[1]): frozenset(h.partitions) for h in found}


def unpublished_partitions(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT bucket FROM outbox WHERE published_at IS NULL"))
        return [row.bucket % PARTITIONS for row in rows]


def scalar(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text(sql)) or 0)
    finally:
        engine.dispose()


def test_sigstopped_relay_partitions_move_to_the_live_relay_within_the_stall_bound(cluster: Cluster) -> None:
    """Partition handover between relays is what is measured."""
    worker = cluster.start_worker(ready=False)  # boots while the test waits out the bound
    live = cluster.start_relay("relay-live")
    frozen = cluster.start_relay("relay-frozen")
    assert live.process is not None
    assert frozen.process is not None
    live_port, frozen_port = health_port(live), health_port(frozen)

    with orders_engine(cluster) as engine:
        shares = wait_until(
            lambda: (h := holdings(engine)) and sorted(len(p) for p in h.values()) == [8, 8] and h,
            timeout=30,
            message="two relays holding 8 partitions each",
        )
        frozen_partitions = shares[frozen.process.pid]
        assert probe(frozen_port)[0] == 200

        os.kill(frozen.process.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        place_in_process(cluster, bodies(40, seed=91))
        # The live relay publishes its own share at once; the frozen relay's share waits for the bound.
        stuck = wait_until(
            lambda: (left := unpublished_partitions(engine)) and set(left) <= frozen_partitions and left,
            timeout=20,
            message="the live relay's rows published",
        )
        print(f"{len(stuck)} of 40 rows in the frozen relay's partitions {sorted(frozen_partitions)}")
        status, error = probe(frozen_port)
        assert status == 0, f"a stopped process answered its health probe: {status} {error}"
        assert probe(live_port)[0] == 200

        wait_until(lambda: not unpublished_partitions(engine), timeout=STALL_BOUND + 15, message="handover")
        handover = time.monotonic() - stopped_at
        print(
            f"handover: all rows published {handover:.1f} s after SIGSTOP (stall bound {STALL_BOUND:.0f} s)"
        )
        # Its last query came up to one rebalance period (1 s) before SIGSTOP; the bound counts from there.
        assert STALL_BOUND - 1.5 <= handover <= STALL_BOUND + 5
        assert "relay.stalled_relay_retired" in live.logs()
        assert holdings(engine) == {live.process.pid: frozenset(range(PARTITIONS))}
        assert probe(frozen_port)[0] == 0  # still frozen, still silent

        os.kill(frozen.process.pid, signal.SIGCONT)
        frozen.wait_for_log("relay.recovered", timeout=20)
        wait_until(
            lambda: sorted(len(p) for p in holdings(engine).values()) == [8, 8],
            timeout=20,
            message="the resumed relay took its share back",
        )
        wait_until(lambda: probe(frozen_port)[0] == 200, timeout=10, message="resumed relay healthy")
        place_in_process(cluster, bodies(10, seed=92))
        wait_until(lambda: not unpublished_partitions(engine), timeout=20, message="rows after resume")

    worker.wait_for_log("ready", timeout=60)
    invoices_url = cluster.databases.invoices_url
    wait_until(
        lambda: scalar(invoices_url, "SELECT count(*) FROM invoices") == 50, timeout=60, message="50 invoices"
    )
    # Each row left a relay once: the two relays' counters add up to the rows, and no message was
    # delivered twice (the resumed relay had nothing claimed; it published nothing again).
    assert published_total(live_port) + published_total(frozen_port) == 50
    assert scalar(invoices_url, "SELECT coalesce(sum(deliveries - 1), 0) FROM message_deliveries") == 0
    assert "relay.database_unavailable" in frozen.logs()  # it noticed that its session was gone


def test_a_relay_hung_in_a_database_call_exits_so_that_its_supervisor_restarts_it(cluster: Cluster) -> None:
    """Its claim waits on a table lock that never ends: the loop is stuck in one call, not waiting.

    ``RELAY_STALL_SECONDS=5`` (shipped 30 s, the lowest the settings accept): the watchdog's mechanism,
    the same at any bound; the SIGSTOP test above keeps the shipped bound.
    """
    cluster.overrides["RELAY_STALL_SECONDS"] = "5"
    relay = cluster.start_relay()
    assert relay.process is not None
    with orders_engine(cluster) as engine, engine.connect() as conn, conn.begin():
        conn.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
        locked_at = time.monotonic()
        code = relay.process.wait(timeout=60)
        exited_after = time.monotonic() - locked_at
    print(f"hung relay exited with {code} {exited_after:.1f} s after its claim blocked")
    assert code == 4
    assert "relay.stalled_exiting" in relay.logs()
    assert exited_after >= 5 - 1  # not before the bound (its last progress came up to a poll before)
