"""RabbitMQ as a three-node cluster that loses one node at a time, and nothing else.

Quorum queues have a member on every node: SIGKILL the node that leads them, bring it back, SIGKILL the
node that leads them next. A publish the broker confirmed survives every such loss, and a client given
every node's URL (kombu's ``amqp://h1;amqp://h2;amqp://h3``) moves on to a survivor by itself.

The mechanics first (kombu alone against the cluster), then the whole loop on it with the shipped
defaults: orders flow through both kills, and every accepted order is ``invoiced`` with exactly one
invoice within the lateness bound of the last kill. One cluster serves the module (starting three nodes
takes 20-40 s); each test begins with every node running.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from flask_outbox.settings import LATENESS_BOUND_SECONDS
from kombu import Connection, Queue
from kombu.exceptions import OperationalError

from harness.databases import PostgresFactory
from harness.waiting import wait_until
from tests.fault.conftest import FAILED
from tests.fault.evidence import invoice_effects
from tests.fault.harness import Cluster, report
from tests.fault.orders import InvoicedSeen, OrderFlow
from tests.support.prerequisites import missing
from tests.support.rabbit_cluster import RabbitCluster, rabbitmq_available
from tests.support.servers import PrivateRedis


@pytest.fixture(scope="module", autouse=True)
def rabbitmq_installed() -> None:
    """Before the module's cluster starts (autouse fixtures of a scope come first)."""
    if not rabbitmq_available():
        missing("needs the RabbitMQ server (rabbitmq-server)")


QUORUM = {"x-queue-type": "quorum"}
RETRY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
"""A publish retried through the failover list: a dead node's URL is skipped within a few seconds."""
ORDERS_PER_SECOND = 3.0
MAX_ORDERS = 600
"""The flow's ceiling, well above what it posts in its time: the loop is bounded either way."""
DOWN_FOR = 8.0
"""A killed node stays down at least this long, orders flowing, before it is started again."""
FLOW_AFTER = 5.0
"""Orders keep coming this long after the second node is back."""


@pytest.fixture(scope="module")
def module_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit") / "nodes")
    started = time.monotonic()
    cluster.start()
    print(f"[rabbitmq cluster] 3 nodes up and clustered in {time.monotonic() - started:.1f} s")
    try:
        yield cluster
    finally:
        print(f"[rabbitmq cluster] {cluster.timing_line()}")
        cluster.stop()


@pytest.fixture
def rabbit_cluster(module_rabbit: RabbitCluster) -> RabbitCluster:
    """The module's cluster with every node running (a node an earlier test left dead is started again)."""
    for node in module_rabbit.nodes:
        if not node.running:
            module_rabbit.restart(node)
    return module_rabbit


@dataclass
class RabbitBroker:
    """What ``Cluster`` uses of its broker (``url``, ``stop``), for a RabbitMQ cluster a fixture owns.

    ``Cluster.env`` puts ``url`` into every process's ``BROKER_URL``: the failover list of all three nodes.
    """

    rabbit: RabbitCluster

    @property
    def url(self) -> str:
        return self.rabbit.url()

    def stop(self) -> None:
        """Nothing: the nodes outlive the processes and are stopped by their fixture."""


@pytest.fixture
def pipeline(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresFactory, rabbit_cluster: RabbitCluster
) -> Iterator[Cluster]:
    """API, order relay, invoice worker, invoice relay and order consumer on the cluster, shipped defaults."""
    broker = cast(PrivateRedis, RabbitBroker(rabbit_cluster))  # Cluster reads ``url`` and calls ``stop``
    cluster = Cluster(root=tmp_path, redis=broker, databases=postgres.fresh_pair(), shipped_defaults=True)
    try:
        worker = cluster.start_worker(ready=False)  # the Celery workers boot while the rest starts
        consumer = cluster.start_order_consumer(ready=False)
        cluster.start_api()
        cluster.start_relay()
        cluster.start_invoice_relay()
        worker.wait_for_log("ready", timeout=90)
        consumer.wait_for_log("ready", timeout=90)
        yield cluster
    finally:
        stopped = []
        for service in reversed(cluster.services):  # what ``close`` does, each one timed
            started = time.monotonic()
            code = service.stop(timeout=10)
            stopped.append(f"{service.name} {code} in {time.monotonic() - started:.1f} s")
        print(f"[rabbitmq cluster] processes stopped: {', '.join(stopped)}")
        cluster.close()
        if request.node.stash.get(FAILED, True):
            print(cluster.logs())
            for node in rabbit_cluster.nodes:
                print(f"--- {node.node}\n{rabbit_cluster.tail(node)}")


def publish(url: str, queue: Queue, payloads: list[str], timeout: float = 60) -> set[str]:
    """Publish each payload with publisher confirms (each awaits its ack), through the failover list.

    A quorum queue without a leader (an election under way) nacks; kombu's ``ensure`` retries a nack at
    once, on the next URL, and gives up after ``max_retries`` within a second, so a nacked payload is sent
    again here after a pause. Returns the payloads that were nacked at least once: a nack does not say the
    message was not enqueued, so those may arrive twice.
    """
    nacked: set[str] = set()
    deadline = time.monotonic() + timeout
    with Connection(url, transport_options={"confirm_publish": True}, connect_timeout=5) as connection:
        producer = connection.Producer()
        for payload in payloads:
            while True:
                try:
                    producer.publish(
                        payload,
                        exchange="",
                        routing_key=queue.name,
                        declare=[queue],
                        delivery_mode=2,
                        retry=True,
                        retry_policy=RETRY,
                    )
                    break
                except OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    nacked.add(payload)
                    time.sleep(0.25)
    return nacked


def drain(url: str, queue: Queue, expected: set[str], timeout: float = 60) -> list[str]:
    """Read ``queue`` (acking each) until every ``expected`` payload came and it is empty, or ``timeout``."""
    received: list[str] = []
    deadline = time.monotonic() + timeout
    with Connection(url, connect_timeout=5) as connection:
        bound = queue(connection.default_channel)
        while time.monotonic() < deadline:
            message = bound.get(no_ack=False)
            if message is None:
                if expected <= set(received):
                    break
                time.sleep(0.1)
                continue
            received.append(message.payload)
            message.ack()
    return received


def test_confirmed_messages_survive_the_quorum_leader_killed(rabbit_cluster: RabbitCluster) -> None:
    cluster = rabbit_cluster
    queue = Queue(f"mechanics-{uuid.uuid4().hex[:8]}", durable=True, queue_arguments=QUORUM)
    sent = [f"m-{n}" for n in range(200)]

    publish(cluster.url(), queue, sent[:100])
    row = cluster.queue(queue.name)
    assert row["type"] == "quorum"
    assert set(row["members"]) == {node.node for node in cluster.nodes}  # replicated on all three
    leader = cluster.queue_leader(queue.name)

    killed = time.monotonic()
    cluster.kill(leader)
    maybe_twice = publish(cluster.url(), queue, sent[100:])  # the failover URL skips the dead node
    outage = time.monotonic() - killed
    elected = cluster.wait_leader_elected(queue.name)
    assert elected is not leader

    received = drain(cluster.url(cluster.live()), queue, set(sent))
    print(
        f"[rabbitmq cluster] leader {leader.name} killed, {elected.name} elected; 100 publishes after the"
        f" kill took {outage:.1f} s, {len(maybe_twice)} nacked and sent again; {len(received)} read back"
    )
    assert set(received) == set(sent)  # every confirmed message
    twice = [payload for payload, n in Counter(received).items() if n > 1]
    assert set(twice) <= maybe_twice  # once, unless it was nacked and sent again


@dataclass
class Invoiced(InvoicedSeen):
    """``InvoicedSeen``, and a way to let orders flow while noting them."""

    def flow_for(self, seconds: float) -> None:
        """Let orders flow (and note when each turns ``invoiced``) for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()
            time.sleep(0.5)


def leaders(rabbit: RabbitCluster, cluster: Cluster) -> dict[str, str]:
    return {queue: rabbit.queue_leader(queue).name for queue in (cluster.queue, cluster.orders_queue)}


def test_rabbitmq_nodes_killed_one_at_a_time_lose_no_order_with_the_shipped_defaults(
    rabbit_cluster: RabbitCluster, pipeline: Cluster
) -> None:
    rabbit, cluster = rabbit_cluster, pipeline
    flow = OrderFlow(cluster, ORDERS_PER_SECOND, MAX_ORDERS, seed=173)
    invoiced = Invoiced(cluster)
    kills: list[tuple[str, int, float, float]] = []
    """(node, client connections it held, seconds until a live leader again, seconds until it was back)."""
    last_kill = time.monotonic()
    done_at: float | None = None
    try:
        flow.start()
        wait_until(lambda: invoiced.poll() >= 10, timeout=60, message="orders going round the loop")
        everyone = {node.node for node in rabbit.nodes}
        for queue in (cluster.queue, cluster.orders_queue):
            row = rabbit.queue(queue)
            assert row["type"] == "quorum", row
            assert set(row["members"]) == everyone, row  # replicated on all three
        print(f"[rabbitmq cluster] leaders before the kills: {leaders(rabbit, cluster)}", flush=True)

        victim = rabbit.queue_leader(cluster.queue)
        for round_ in (1, 2):
            held = rabbit.connections()
            print(f"[rabbitmq cluster] client connections per node before kill {round_}: {held}", flush=True)
            killed_at = time.monotonic()
            rabbit.kill(victim)
            last_kill = killed_at
            rabbit.wait_leader_elected(cluster.queue)
            elected = time.monotonic() - killed_at
            invoiced.flow_for(max(0.0, killed_at + DOWN_FOR - time.monotonic()))
            rabbit.restart(victim)
            for queue in (cluster.queue, cluster.orders_queue):
                rabbit.wait_members_online(queue)
            kills.append((victim.name, held[victim.name], elected, time.monotonic() - killed_at))
            now_leading = leaders(rabbit, cluster)
            print(f"[rabbitmq cluster] kill {round_} of {victim.name}: leaders now {now_leading}", flush=True)
            if round_ == 1:  # the second: another node that leads a queue now, the busiest if there are two
                leading = {name for name in now_leading.values() if name != victim.name}
                held = rabbit.connections()
                others = [rabbit.node(name) for name in sorted(leading, key=held.__getitem__, reverse=True)]
                victim = others[0] if others else next(n for n in rabbit.nodes if n is not victim)
        invoiced.flow_for(FLOW_AFTER)
        flow.finish()

        # Past the bound too: the figure is printed either way.
        done_at = invoiced.all_invoiced_by(flow, last_kill + LATENESS_BOUND_SECONDS + 30)
    finally:
        flow.finish()

    waits = {i: invoiced.seen[i] - at for i, at in flow.accepted.items() if i in invoiced.seen}
    late = None if done_at is None else done_at - last_kill
    verdict = cluster.checker.verdict()
    steps = "; ".join(
        f"{name} killed ({connections} client connections): a live leader {elected:.1f} s later,"
        f" back in the cluster {back:.1f} s later"
        for name, connections, elected, back in kills
    )
    settled = "never" if late is None else f"{late:.1f} s"
    report(
        f"rabbitmq node killed twice; {steps}; {len(flow.accepted)} orders, all invoiced {settled} after the"
        f" last kill (bound {LATENESS_BOUND_SECONDS:.0f} s); slowest order"
        f" {max(waits.values(), default=0.0):.1f} s from its 201 to invoiced",
        verdict,
    )
    assert flow.refused == []
    assert kills[0][1] > 0  # the first kill cut the processes' connections: they had to fail over
    assert late is not None, f"not all invoiced ({verdict.summary()})"
    assert late <= LATENESS_BOUND_SECONDS
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert {verdict.invoices.get(order_id) for order_id in flow.accepted} == {1}
    effects, garbled = invoice_effects(cluster.log_dir)
    assert garbled == 0
    assert {i: effects[i] for i in flow.accepted} == dict.fromkeys(flow.accepted, 1)  # none twice
