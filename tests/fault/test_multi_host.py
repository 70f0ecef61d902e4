"""One order relay's host loses its path to Redis, or to Postgres, while orders flow (hosts as namespaces).

The root network namespace is the server host: a private Postgres and a private Redis, each on an
address of its own, and the API, the invoice worker, the invoice relay and the order consumer. The
two order relays run on two other hosts (``tests/support/netns.py``), 8 partitions each. A cut drops
every packet relay 1's host sends to one server (a DROP rule in that host's own namespace):
established connections time out and new ones go unanswered, as behind a broken link; relay 2's
path stays. Everything runs on the shipped defaults, so the figures printed are the real ones.

* Redis cut: relay 1's publishes fail (with silent drops, only after the client's timeouts); it waits
  for the broker, and half the stall bound into the wait gives its partitions up
  (``relay.partitions_released``); relay 2 takes them at its next rebalance.
* Postgres cut: relay 1's session goes silent; past the stall bound the live relay ends it
  (``relay.stalled_relay_retired``; the server's TCP keepalives, set to the same bound, may be first)
  and takes its partitions. Relay 1 sees its call time out and retries, or its watchdog ends it
  (exit 4) for a supervisor: the test restarts it then, once the path is back.

Either way every accepted order ends ``invoiced`` with exactly one invoice within the lateness bound
(120 s) of the cut, while orders keep coming for a minute after it. A cut-off relay that kept its
partitions (as before the release in a broker outage) left their orders ``placed``: no handover, and
the bound passes.

The two tests share one site (its Postgres cluster and a dozen processes take half a minute to start);
each starts from it healed: no path cut, both relays running with 8 partitions each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from flask_outbox.partitions import LockKeys, relay_holdings
from flask_outbox.relay import RelayPolicy
from flask_outbox.settings import LATENESS_BOUND_SECONDS, RelaySettings
from sqlalchemy import Engine, create_engine

from harness.databases import PostgresFactory
from harness.processes import Service, relay_service
from harness.waiting import wait_until
from tests.fault.conftest import FAILED
from tests.fault.evidence import invoice_effects
from tests.fault.harness import Cluster, report
from tests.fault.orders import InvoicedSeen, OrderFlow
from tests.support import netns
from tests.support.netns import Host, Network
from tests.support.prerequisites import missing
from tests.support.servers import PrivatePostgres, PrivateRedis

STALL_BOUND = float(RelaySettings.model_fields["relay_stall_seconds"].default)
PARTITIONS = RelayPolicy().partitions
ALL_PARTITIONS = frozenset(range(PARTITIONS))
KEYS = LockKeys.for_table("outbox")
ORDERS_PER_SECOND = 2.0
FLOW_AFTER_CUT = 60.0
"""Orders keep coming this long after the cut; the route stays cut all along."""
MAX_ORDERS = 400
"""The flow's ceiling, well above what it posts in its time: the loop is bounded either way."""
HELD = 10.0
"""An order that took longer than this from its 201 to ``invoiced`` waited for the handover."""


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = netns.unavailable()
    if reason is not None:
        missing(reason)
    network = Network()
    try:
        yield network
    finally:
        network.close()


@dataclass
class Site:
    """The server host's loop, and the two relay hosts with their relays."""

    network: Network
    cluster: Cluster
    postgres_address: str
    redis_address: str
    hosts: list[Host] = field(default_factory=list)
    relays: list[Service] = field(default_factory=list)
    cuts: set[tuple[int, str]] = field(default_factory=set)
    """(host index, address) of the paths cut now."""
    log_marks: dict[str, int] = field(default_factory=dict)
    """Each relay's log length when the site was last healed: where the current test's lines start."""

    def start_relay(self, name: str) -> None:
        host = self.network.add_host()
        relay = relay_service(self.cluster.env, self.cluster.log_dir, name=name)
        relay.command = host.command(relay.command)
        self.cluster.services.append(relay.start())
        relay.wait_for_log("relay.started", timeout=60)
        self.hosts.append(host)
        self.relays.append(relay)

    def cut(self, host: Host, address: str) -> None:
        self.network.cut(host, address)
        self.cuts.add((self.hosts.index(host), address))

    def restore(self, host: Host, address: str) -> None:
        self.network.restore(host, address)
        self.cuts.discard((self.hosts.index(host), address))

    def heal(self) -> None:
        """Every path back, every relay running (as its supervisor would), 8 partitions each."""
        for index, address in sorted(self.cuts):
            self.restore(self.hosts[index], address)
        for relay in self.relays:
            if not relay.running:
                relay.start()
        wait_for_equal_shares(self, timeout=90, message="the site healed: two relays with 8 partitions each")
        self.log_marks = {relay.name: len(relay.logs()) for relay in self.relays}

    def new_logs(self, relay: Service) -> str:
        """What ``relay`` logged since the site was last healed: the current test's lines only."""
        return relay.logs()[self.log_marks.get(relay.name, 0) :]


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory: pytest.TempPathFactory, network: Network) -> Iterator[Site]:
    tmp_path = tmp_path_factory.mktemp("multi-host")
    postgres_address, redis_address = network.serve(2)
    postgres = PrivatePostgres(
        tmp_path / "pg",
        port=netns.unclaimed_port(postgres_address),  # initdb takes seconds: no port-0 socket may take it
        host=postgres_address,
        trusted=str(netns.SITE),
    )
    redis_port = netns.unclaimed_port(redis_address)
    redis_server = PrivateRedis(tmp_path / "redis", port=redis_port, host=redis_address)
    cluster: Cluster | None = None
    try:
        postgres.init().start()
        redis_server.start()
        databases = PostgresFactory(postgres.url()).fresh_pair()
        cluster = Cluster(root=tmp_path, redis=redis_server, databases=databases, shipped_defaults=True)
        site = Site(network, cluster, postgres_address, redis_address)
        worker = cluster.start_worker(ready=False)  # boots while the rest starts
        consumer = cluster.start_order_consumer(ready=False)
        cluster.start_invoice_relay()
        cluster.start_api()
        site.start_relay("relay-1")
        site.start_relay("relay-2")
        try:
            worker.wait_for_log("ready", timeout=90)
            consumer.wait_for_log("ready", timeout=90)
        except Exception:
            print(cluster.logs())
            raise
        yield site
    finally:
        if cluster is not None:
            cluster.close()  # every process, the relay hosts' too, before their namespaces go
        redis_server.stop()
        postgres.stop("immediate")


@pytest.fixture
def site(request: pytest.FixtureRequest, shared_site: Site) -> Iterator[Site]:
    """The module's site, healed; the processes' logs are printed with a test that failed."""
    shared_site.heal()
    yield shared_site
    if request.node.stash.get(FAILED, True):
        print(shared_site.cluster.logs())


def holdings(engine: Engine) -> dict[str, frozenset[int]]:
    """Relay host address → the partitions its relay holds, from the database's own lock table."""
    with engine.connect() as conn:
        found = relay_holdings(conn, KEYS)
    return {h.client.split("/")[0]: frozenset(h.partitions) for h in found}


def shares(engine: Engine) -> list[int]:
    return sorted(len(partitions) for partitions in holdings(engine).values())


def wait_for_equal_shares(site: Site, *, timeout: float, message: str) -> None:
    """Both relay hosts holding 8 partitions each again."""
    addresses = {host.address for host in site.hosts}
    engine = create_engine(site.cluster.databases.orders_url)
    try:
        wait_until(
            lambda: holdings(engine).keys() == addresses and shares(engine) == [8, 8],
            timeout=timeout,
            message=message,
        )
    finally:
        engine.dispose()


@dataclass
class Outcome:
    flow: OrderFlow
    invoiced: InvoicedSeen
    cut_at: float
    handover_s: float | None
    """From the cut until relay 2 alone held every partition."""
    strays: list[dict[str, frozenset[int]]]
    """Holdings seen after the handover, before the end of the flow, other than relay 2 holding all."""
    all_invoiced_s: float | None
    """From the cut until every accepted order was ``invoiced``."""

    @property
    def waits(self) -> dict[str, float]:
        """Each accepted order's time from its 201 to ``invoiced`` (those invoiced)."""
        seen = self.invoiced.seen
        return {i: seen[i] - at for i, at in self.flow.accepted.items() if i in seen}

    def line(self) -> str:
        waits = self.waits
        slowest = max(waits.values(), default=0.0)
        held = sum(1 for wait in waits.values() if wait > HELD)
        handover = "never" if self.handover_s is None else f"{self.handover_s:.1f} s"
        settled = "never" if self.all_invoiced_s is None else f"{self.all_invoiced_s:.1f} s"
        return (
            f"handover {handover} after the cut; {len(self.flow.accepted)} orders, all invoiced {settled} "
            f"after the cut (bound {LATENESS_BOUND_SECONDS:.0f} s); slowest order {slowest:.1f} s from its "
            f"201 to invoiced, {held} waited over {HELD:.0f} s"
        )


def cut_while_orders_flow(site: Site, address: str, label: str) -> Outcome:
    """Relay 1's host loses ``address`` a few seconds into a steady flow of orders, for good."""
    cluster = site.cluster
    relay_host, live_host = site.hosts
    engine = create_engine(cluster.databases.orders_url)
    flow = OrderFlow(cluster, ORDERS_PER_SECOND, MAX_ORDERS, seed=131)
    invoiced = InvoicedSeen(cluster)
    try:
        wait_until(
            lambda: shares(engine) == [8, 8], timeout=30, message="two relays holding 8 partitions each"
        )
        flow.start()
        wait_until(lambda: invoiced.poll() >= 10, timeout=60, message="orders going round the loop")
        cut_at = time.monotonic()
        site.cut(relay_host, address)
        handover_at: float | None = None
        strays = []
        while (now := time.monotonic()) < cut_at + FLOW_AFTER_CUT:
            invoiced.poll()
            held = holdings(engine)
            if handover_at is None and held == {live_host.address: ALL_PARTITIONS}:
                handover_at = now
            elif handover_at is not None and held != {live_host.address: ALL_PARTITIONS}:
                strays.append(held)
            time.sleep(1)
        flow.finish()
        # Past the bound too: the figure is printed either way.
        done_at = invoiced.all_invoiced_by(flow, cut_at + LATENESS_BOUND_SECONDS + 30)
    finally:
        flow.finish()
        engine.dispose()
    outcome = Outcome(
        flow,
        invoiced,
        cut_at,
        None if handover_at is None else handover_at - cut_at,
        strays,
        None if done_at is None else done_at - cut_at,
    )
    print(f"[{label}] {outcome.line()}", flush=True)
    return outcome


def assert_every_order_invoiced_once_within_the_bound(site: Site, outcome: Outcome, label: str) -> None:
    verdict = site.cluster.checker.verdict()
    report(label, verdict)
    accepted = outcome.flow.accepted
    assert outcome.flow.refused == []
    settled = outcome.all_invoiced_s
    assert settled is not None, f"not all invoiced ({verdict.summary()})"
    assert settled <= LATENESS_BOUND_SECONDS
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert {verdict.invoices.get(order_id) for order_id in accepted} == {1}
    effects, garbled = invoice_effects(site.cluster.log_dir)
    assert garbled == 0
    assert {order_id: effects[order_id] for order_id in accepted} == dict.fromkeys(accepted, 1)  # none twice
    # The fault did bite: the cut-off relay's orders waited for the handover.
    assert any(wait > HELD for wait in outcome.waits.values())


def test_relay_cut_off_from_redis_hands_its_partitions_over_on_the_shipped_defaults(site: Site) -> None:
    relay, live = site.relays
    relay_host = site.hosts[0]
    outcome = cut_while_orders_flow(site, site.redis_address, "relay 1 cut off from Redis")
    handover = outcome.handover_s

    assert handover is not None, "relay 2 never held every partition"
    assert outcome.strays == []  # relay 2 held them all until the end of the flow
    assert "relay.broker_unavailable" in site.new_logs(relay)
    assert "relay.partitions_released" in site.new_logs(relay)
    # Released half the stall bound into its wait for the broker, not sooner (the wait starts at the
    # first failed publish, some seconds after the cut).
    assert handover >= STALL_BOUND / 2
    assert relay.running
    assert live.running
    assert_every_order_invoiced_once_within_the_bound(site, outcome, "relay 1 cut off from Redis")

    site.restore(relay_host, site.redis_address)
    wait_for_equal_shares(site, timeout=30, message="relay 1 back with its share once its broker answers")
    wait_until(
        lambda: "relay.broker_back" in site.new_logs(relay), timeout=30, message="relay 1's broker back"
    )


def test_relay_cut_off_from_postgres_loses_its_partitions_to_the_live_relay_on_the_shipped_defaults(
    site: Site,
) -> None:
    relay, live = site.relays
    relay_host = site.hosts[0]
    outcome = cut_while_orders_flow(site, site.postgres_address, "relay 1 cut off from Postgres")
    handover = outcome.handover_s

    assert handover is not None, "relay 2 never held every partition"
    assert outcome.strays == []
    assert handover >= STALL_BOUND - 2  # its last query came up to a rebalance (1 s) before the cut
    # Relay 1 either saw its connection time out and retries, or hung in that one call past the stall
    # bound and its watchdog ended it (exit 4) for its supervisor to restart: both by design.
    if relay.running:
        assert "relay.database_unavailable" in site.new_logs(relay)
        fate = "kept retrying its database"
    else:
        assert relay.process is not None
        assert relay.process.returncode == 4
        assert "relay.stalled_exiting" in site.new_logs(relay)
        fate = "exited (watchdog, exit 4)"
    retired = "relay.stalled_relay_retired" in site.new_logs(live)
    ended = "relay 2 (retired)" if retired else "the server (TCP keepalive)"
    print(f"relay 1's database session ended by {ended}; relay 1 {fate}", flush=True)
    assert live.running
    assert_every_order_invoiced_once_within_the_bound(site, outcome, "relay 1 cut off from Postgres")

    site.restore(relay_host, site.postgres_address)
    if not relay.running:
        relay.start()  # as its supervisor would (compose: restart: unless-stopped)
    wait_for_equal_shares(  # its reconnect backs off up to 30 s
        site, timeout=60, message="relay 1 back with its share once its database answers"
    )
