"""``make bench-relay BROKER=rabbitmq``: the relay publishing a backlog to RabbitMQ, against the raw floor.

Paired rounds (the order alternating, as ``make bench`` does), each of three drains of ``ROWS`` messages
onto quorum queues of a vhost the bench makes and deletes (``bench.rabbitmq``):

- *relay*: one ``python -m order_service.relay`` process drains a clone of one prefilled outbox (rows
  not yet due, so it starts idle; one UPDATE makes them all due), release → every row marked published.
  It publishes with batch confirms (``AmqpConfirmPublisher``: a claim of ``RELAY_BATCH_SIZE`` rows, 100
  messages per batch task, one confirm wait per claim) and marks the rows in the claim's transaction;
- *floor*: py-amqp alone publishes ``ROWS`` messages (the relay's single-task encoding of an outbox
  row: the same bytes) to a quorum queue, one confirm wait per ``RELAY_BATCH_SIZE`` messages, no
  database: the fastest the broker takes confirmed messages here. The headline is relay ÷ floor in
  messages/s, each round's ratio, their median (target ≥ 0.7);
- *floor_tasks*: py-amqp publishing exactly what the relay sends for ``ROWS`` rows (batch tasks of 100
  messages, one confirm wait per ``RELAY_BATCH_SIZE`` rows): the broker's share of the relay's time, so
  relay ÷ floor_tasks is what the database and the relay's own work leave of it.

Every queue is emptied and checked (all messages there, a batch task counting its messages) after its
drain. Writes ``bench/results/relay-rabbitmq.json`` and renders its block of docs/performance.md.
``BENCH_QUICK=1``: 10 000 rows, one round, ``relay-rabbitmq-quick.json``, no docs. Knobs:
``BENCH_RELAY_ROWS``, ``BENCH_RELAY_ROUNDS``, ``BENCH_POSTGRES_URL``, ``BENCH_AMQP_HOST``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import amqp
from flask_outbox.broker import publishing_app
from flask_outbox.db import create_db_engine
from flask_outbox.logs import configure_logging
from flask_outbox.messages import PendingMessage
from flask_outbox.publisher import MESSAGES_PER_TASK
from flask_outbox.signing import MessageSigner
from flask_outbox.task_messages import TaskMessage, TaskMessages
from kombu.connection import Connection

from bench.provenance import machine, source
from bench.rabbitmq import bench_vhost, queue_messages
from bench.relay import LOGS, POSTGRES_URL, Databases, Result, Sampler, balanced, drained, release
from bench.report import (
    PERFORMANCE,
    RABBIT_RELAY_END,
    RABBIT_RELAY_START,
    render_relay_rabbitmq,
    replace_block,
)
from harness.outbox import aggregate, order_payload
from harness.processes import TEST_SIGNING_KEY, pipeline_env, relay_service
from harness.waiting import wait_until
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES

__all__ = ["main"]

QUICK = bool(os.environ.get("BENCH_QUICK"))
ROWS = int(os.environ.get("BENCH_RELAY_ROWS", "10000" if QUICK else "100000"))
ROUNDS = int(os.environ.get("BENCH_RELAY_ROUNDS", "1" if QUICK else "3"))
BATCH = 500
"""``RELAY_BATCH_SIZE``'s default: the relay's claim, and the floors' messages per confirm wait."""
TARGET = 0.7
if ROWS % BATCH:
    raise SystemExit(f"BENCH_RELAY_ROWS={ROWS}: a multiple of {BATCH}, so every variant sends the same rows")
RESULTS = (
    Path(__file__).parent / "results" / ("relay-rabbitmq-quick.json" if QUICK else "relay-rabbitmq.json")
)
ROUTE = ROUTES[ORDER_PLACED]
VARIANTS = ("relay", "floor", "floor_tasks")


def _queue(prefix: str) -> str:
    return f"{prefix}{ROUTE.queue}"


def relay(orders_url: str, broker_url: str, prefix: str) -> Result:
    """The real relay process, measured from release to drained (its CPU and RSS sampled meanwhile)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    env = pipeline_env(
        orders_url=orders_url, invoices_url=orders_url, broker_url=broker_url, var_dir=LOGS / "var",
        queue_prefix=prefix, LOG_LEVEL="WARNING", RELAY_POLL_INTERVAL="1.0", RELAY_BATCH_SIZE=str(BATCH),
    )  # fmt: skip
    service = relay_service(env, LOGS, name="rabbitmq-relay").start()
    engine = create_db_engine(orders_url)
    try:
        wait_until(lambda: balanced(engine, 1), timeout=60, message="the relay to hold its partitions")
        time.sleep(1.0)  # imports, connections and the queue's declaration settled before the baseline
        assert service.process is not None
        sampler = Sampler([service.process.pid])
        release(engine)
        started = time.perf_counter()
        wait_until(drained(engine), timeout=900, interval=0.01, message="drain")
        seconds = time.perf_counter() - started
        return Result("product relay, 1 process", ROWS, seconds, *sampler.finish())
    finally:
        service.signal_group(signal.SIGTERM)
        service.stop()
        engine.dispose()


def _amqp_message(task: TaskMessage) -> amqp.Message:
    """As ``AmqpConfirmPublisher`` sends it: JSON body, persistent, Celery's headers and properties."""
    return amqp.Message(
        json.dumps(task.body),
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=task.headers,
        delivery_mode=2,
        **task.properties,
    )


def relay_messages(prefix: str, batched: bool) -> list[amqp.Message]:
    """One claim's worth of what the relay publishes: ``BATCH`` single tasks, or its batch tasks."""
    settings = Settings.model_construct(broker_url="amqp://", queue_prefix=prefix)
    tasks = TaskMessages(
        publishing_app(settings, "floor"),
        MessageSigner(TEST_SIGNING_KEY.encode()),
        prefix,
        MESSAGES_PER_TASK if batched else 1,
    )
    pending = [
        PendingMessage(
            n, uuid.uuid4(), ORDER_PLACED, aggregate(n), order_payload(aggregate(n)), {"schema_version": 1}, 0
        )
        for n in range(BATCH)
    ]
    return [_amqp_message(task) for task in tasks.build([(message, ROUTE) for message in pending])]


def floor(broker_url: str, prefix: str, batched: bool) -> Result:
    """py-amqp publishing ``ROWS`` rows' messages to a quorum queue, one confirm wait per ``BATCH`` rows."""
    claim = relay_messages(prefix, batched)
    pending: set[int] = set()

    def ack(tag: int, multiple: bool) -> None:
        pending.difference_update({t for t in pending if t <= tag} if multiple else {tag})

    def nack(tag: int, multiple: bool) -> None:
        raise RuntimeError(f"the broker nacked message {tag}")

    with Connection(broker_url) as kombu_connection:  # type: ignore[no-untyped-call]
        kombu_connection.connect()
        connection: amqp.Connection = kombu_connection.connection
        channel = connection.channel()
        channel.queue_declare(
            _queue(prefix), durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
        )
        channel.confirm_select()
        channel.events["basic_ack"].add(ack)
        channel.events["basic_nack"].add(nack)
        sent = 0
        sampler, started = Sampler([os.getpid()]), time.perf_counter()
        for _ in range(ROWS // BATCH):
            for message in claim:
                channel.basic_publish(message, exchange="", routing_key=_queue(prefix), mandatory=True)
                sent += 1
                pending.add(sent)
            while pending:
                connection.drain_events(timeout=10)
        seconds = time.perf_counter() - started
        label = f"floor: py-amqp, {'batch tasks' if batched else 'one message per row'}, confirm per {BATCH}"
        return Result(label, ROWS, seconds, *sampler.finish())


def _empty(broker_url: str, prefix: str, expected: int) -> int:
    """Take the drain's messages off its queue (deleted after); how many Celery messages carried them."""
    tasks, carried = queue_messages(broker_url, _queue(prefix))
    if carried != expected:
        raise RuntimeError(f"{carried} messages in {_queue(prefix)} for {expected} published")
    with Connection(broker_url) as connection:  # type: ignore[no-untyped-call]
        connection.default_channel.queue_delete(_queue(prefix))
    return tasks


def paired_rounds(broker_url: str) -> list[dict[str, Any]]:
    databases = Databases(ROWS)
    rounds: list[dict[str, Any]] = []
    try:
        for number in range(ROUNDS):
            order = VARIANTS if number % 2 == 0 else tuple(reversed(VARIANTS))
            row: dict[str, Any] = {"round": number, "order": list(order)}
            for variant in order:
                prefix = f"bench-relay-{uuid.uuid4().hex[:8]}-"
                if variant == "relay":
                    result = relay(databases.clone(), broker_url, prefix)
                else:
                    result = floor(broker_url, prefix, batched=variant == "floor_tasks")
                amqp_messages = _empty(broker_url, prefix, ROWS)
                row[variant] = {**asdict(result), "rate": result.rate, "cpu_s_per_10k": result.cpu_per_10k}
                row[variant]["amqp_messages"] = amqp_messages
                print(f"  round {number} {result.variant}: {result.rate:,.0f} msg/s", flush=True)
            row["ratio"] = row["relay"]["rate"] / row["floor"]["rate"]
            row["ratio_tasks"] = row["relay"]["rate"] / row["floor_tasks"]["rate"]
            print(
                f"  round {number}: relay/floor {row['ratio']:.2f},"
                f" relay/floor_tasks {row['ratio_tasks']:.2f}",
                flush=True,
            )
            rounds.append(row)
    finally:
        databases.close()
    return rounds


def main() -> int:
    configure_logging("WARNING")
    with bench_vhost() as broker_url:
        results: dict[str, Any] = {"source": source(), "machine": machine(POSTGRES_URL, broker_url)}
        print(f"relay bench on RabbitMQ: {ROWS:,} rows, {ROUNDS} paired round(s)", flush=True)
        rounds = paired_rounds(broker_url)
    results |= {
        "load_average_after": os.getloadavg(),
        "quick": QUICK,
        "rows": ROWS,
        "rounds": ROUNDS,
        "batch": BATCH,
        "messages_per_task": MESSAGES_PER_TASK,
        "cpus": os.cpu_count(),
        "median_rate": {v: statistics.median(r[v]["rate"] for r in rounds) for v in VARIANTS},
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "ratio_tasks": statistics.median(r["ratio_tasks"] for r in rounds),
        "target_ratio": TARGET,
        "per_round": rounds,
    }
    verdict = "met" if results["ratio"] >= TARGET else "MISSED"
    rates = results["median_rate"]
    print(
        f"\nmedian msg/s: relay {rates['relay']:,.0f}, floor {rates['floor']:,.0f}"
        f", floor_tasks {rates['floor_tasks']:,.0f}\nrelay/floor {results['ratio']:.2f}"
        f" (target >= {TARGET}: {verdict}), relay/floor_tasks {results['ratio_tasks']:.2f}"
    )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {RESULTS}")
    if not QUICK:
        replace_block(PERFORMANCE, RABBIT_RELAY_START, RABBIT_RELAY_END, render_relay_rabbitmq(results))
        print("docs/performance.md: its RabbitMQ relay block rendered from it (bench.report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
