"""RabbitMQ (``amqp://``, ``amqps://``, a failover list) as the broker: every process's configuration.

Nothing here connects: what each process builds from ``BROKER_URL`` before it reaches the broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask_outbox import InboxWorker
from flask_outbox.amqp_publisher import AmqpConfirmPublisher
from flask_outbox.broker import broker_config, publishing_app, worker_broker_config
from flask_outbox.probes import broker_check
from flask_outbox.publisher import publisher_for

from harness.processes import TEST_SIGNING_KEY
from invoice_worker.models import inbox
from shared.config import ApiSettings, Settings
from shared.contracts import ROUTES

BROKERS = [
    "amqp://orders:Qm7vT2xL9pW4rK8nZ3cY@127.0.0.1:5672/pipeline",
    "amqps://orders:Qm7vT2xL9pW4rK8nZ3cY@rabbit.internal:5671/pipeline",
    "amqp://orders:Qm7vT2xL9pW4rK8nZ3cY@h1:5672/p;amqp://orders:Qm7vT2xL9pW4rK8nZ3cY@h2:5672/p",
]


def _settings(broker_url: str, tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        broker_url=broker_url,
        var_dir=tmp_path,
        message_signing_key=TEST_SIGNING_KEY,
        queue_prefix="p-",
        **extra,
    )


@pytest.mark.parametrize("broker_url", BROKERS)
def test_every_queue_celery_declares_on_rabbitmq_is_a_durable_quorum_queue(
    broker_url: str, tmp_path: Path
) -> None:
    settings = _settings(broker_url, tmp_path)
    worker = InboxWorker(
        "invoice-worker", settings, f"sqlite:///{tmp_path}/w.sqlite3", inbox, queue="invoices"
    )
    queue = worker.app.amqp.queues["p-invoices"]  # the worker's -Q queue
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    assert queue.durable
    assert queue.exchange.type == "topic"
    relay_app = publishing_app(settings, "relay")
    assert relay_app.amqp.queues["p-orders"].queue_arguments == {"x-queue-type": "quorum"}
    assert broker_config(settings)["broker_transport_options"] == {"confirm_publish": True}
    assert "visibility_timeout" not in worker_broker_config(settings)["broker_transport_options"]


@pytest.mark.parametrize("broker_url", BROKERS)
def test_the_relay_gets_the_confirming_publisher_without_connecting(broker_url: str, tmp_path: Path) -> None:
    publisher = publisher_for(_settings(broker_url, tmp_path), ROUTES)
    assert isinstance(publisher, AmqpConfirmPublisher)
    publisher.close()


@pytest.mark.parametrize("broker_url", BROKERS)
def test_the_broker_probe_is_built_for_amqp(broker_url: str) -> None:
    """It used to parse the URL as Redis's and stop the process at start."""
    assert callable(broker_check(broker_url, Path("unused")))


@pytest.mark.parametrize("broker_url", BROKERS)
def test_the_api_counts_rate_limits_in_process_when_the_broker_is_not_redis(broker_url: str) -> None:
    assert ApiSettings(broker_url=broker_url).rate_limit_storage == "memory://"


def test_the_visibility_timeout_relation_does_not_apply_to_rabbitmq(tmp_path: Path) -> None:
    """RabbitMQ returns a lost worker's messages when its channel closes: there is no timeout to outwait."""
    assert _settings(BROKERS[0], tmp_path, outbox_redrive_after_seconds=30).relation_problems() == []
    with pytest.raises(ValueError, match="BROKER_VISIBILITY_TIMEOUT"):
        _settings("redis://127.0.0.1:6379/0", tmp_path, outbox_redrive_after_seconds=30)
