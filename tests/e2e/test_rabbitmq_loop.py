"""The closed loop on RabbitMQ (a vhost of its own): API, both relays, invoice worker, order consumer.

Every process reads ``BROKER_URL=amqp://…``; the queues are quorum queues the project declared. A
SIGKILLed invoice worker's reserved messages are back in the queue as soon as its channel closes:
no visibility timeout to wait out (on Redis, ``BROKER_VISIBILITY_TIMEOUT`` plus the sweep, ~70 s).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from kombu.connection import Connection

from harness.processes import worker_service
from harness.waiting import wait_until
from shared.config import Settings
from tests.e2e.test_closed_loop import all_invoiced, read_state, start_loop
from tests.support.orders import order_body, post_orders
from tests.support.rabbitmq import Vhost


def _ready(vhost: Vhost, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare: milliseconds, unlike ``rabbitmqctl``)."""
    with Connection(vhost.url) as connection:
        return int(connection.default_channel.queue_declare(queue, passive=True).message_count)


def test_orders_go_round_the_loop_on_rabbitmq_and_a_killed_workers_messages_come_back_in_seconds(
    amqp_settings: Settings, rabbit_vhost: Vhost, tmp_path: Path
) -> None:
    settings = amqp_settings
    loop = start_loop(settings, tmp_path / "logs")
    try:
        rng = random.Random(7)
        created = post_orders(loop.base_url, [order_body(rng) for _ in range(40)], concurrency=8)
        state = wait_until(
            lambda: all_invoiced(settings, 40), timeout=120, interval=0.5, message="40 invoiced"
        )
        assert {order["id"] for order in created} == set(state.orders)
        assert {order_id: number for order_id, (_, number) in state.orders.items()} == state.invoices
        assert set(rabbit_vhost.queue_types().values()) >= {"quorum"}
        for queue in ("invoices", "orders"):
            assert rabbit_vhost.queue_types()[settings.queue(queue)] == "quorum"

        # A worker that has reserved messages (stopped, so it cannot finish them) is SIGKILLed.
        invoice_worker = loop.services[2]
        invoice_worker.signal_group(signal.SIGSTOP)
        post_orders(loop.base_url, [order_body(rng) for _ in range(20)], concurrency=8)
        queue = settings.queue("invoices")
        wait_until(lambda: rabbit_vhost.queue_counts(queue)[1] > 0, timeout=60, message="reserved messages")
        reserved = rabbit_vhost.queue_counts(queue)[1]
        ready_before = _ready(rabbit_vhost, queue)
        invoice_worker.kill()
        killed = time.monotonic()
        wait_until(
            lambda: _ready(rabbit_vhost, queue) >= ready_before + reserved,
            timeout=30,
            interval=0.02,
            message="the killed worker's messages back in the queue",
        )
        returned = time.monotonic() - killed
        replacement = worker_service(loop.services[0].env, tmp_path / "logs", queue, name="worker-2").start()
        loop.services.append(replacement)
        wait_until(lambda: all_invoiced(settings, 60), timeout=120, interval=0.2, message="60 invoiced")
        invoiced = time.monotonic() - killed
        print(
            f"RabbitMQ worker kill: {reserved} reserved message(s) back in the queue {returned:.2f} s after "
            f"SIGKILL; all 60 orders invoiced {invoiced:.1f} s after it (a new worker started at the kill)"
        )
        assert returned < 5
        final = read_state(settings)
        assert len(final.invoices) == 60
        assert final.redriven_rows == 0  # nothing waited for a re-drive
    except BaseException:
        print(loop.logs())
        raise
    finally:
        loop.stop()
