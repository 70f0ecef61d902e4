"""A worker on RabbitMQ whose reconnection meets a channel error keeps trying instead of exiting.

A node of a cluster that dies can leave the worker's mailbox queue (``….celery.pidbox``) behind on it,
and the worker's next declare or bind is refused with a channel error (404). Celery's default treats
that as unrecoverable and the worker process exits (seen in the three-node test: 98 of 115 orders
waited for a worker that was gone). Here the refusal is made on purpose in a vhost of the test's own:
its user loses the right to declare queues, every connection of the vhost is closed, and the worker
reconnects into ``ACCESS_REFUSED``. Once the right comes back it must be consuming again.
"""

from __future__ import annotations

from pathlib import Path

from harness.processes import run_migrations, settings_env, worker_service
from harness.rabbitmqctl import rabbitmqctl
from harness.waiting import wait_until
from shared.config import Settings
from tests.support.rabbitmq import Vhost

_RECONNECTING = "Connection to broker lost"


def test_a_worker_whose_reconnection_is_refused_by_the_broker_retries_and_consumes_again(
    amqp_settings: Settings, rabbit_vhost: Vhost, tmp_path: Path
) -> None:
    env = settings_env(amqp_settings)
    run_migrations(env)
    queue = amqp_settings.queue("invoices")
    worker = worker_service(env, tmp_path, queue).start()
    try:
        worker.wait_for_log("ready", timeout=60)
        wait_until(lambda: rabbit_vhost.consumers(queue) == 1, timeout=30, message="the worker consuming")

        rabbit_vhost.grant(configure="^$")  # no queue or exchange may be declared, not even an existing one
        rabbitmqctl("close_all_connections", "--vhost", rabbit_vhost.name, "a channel error on reconnect")
        # Either outcome is logged: Celery's "Unrecoverable error" (then a warm shutdown), or a second
        # "Connection to broker lost", the retry after the refusal.
        wait_until(
            lambda: (
                "ACCESS_REFUSED" in worker.logs()
                and ("Unrecoverable error" in worker.logs() or worker.logs().count(_RECONNECTING) >= 2)
            ),
            timeout=60,
            message="the worker's reconnection refused, then retried or given up",
        )
        assert "Unrecoverable error" not in worker.logs(), f"the worker gave up:\n{worker.logs()[-3000:]}"

        rabbit_vhost.grant()
        wait_until(
            lambda: rabbit_vhost.consumers(queue) == 1, timeout=60, message="the worker consuming again"
        )
        assert worker.running
        assert "Warm shutdown" not in worker.logs()
    finally:
        worker.stop()
