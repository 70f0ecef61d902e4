"""A relay process's command line, shared by every service that owns an outbox.

``python -m <service>.relay [run [--once] | status | retry-parked]``: each service names its table,
its database, its publisher and the topics that expect an answer (``RelayProgram``); everything
else (health endpoint, signals, the SQLite file lock, status) is the same code.

``run`` also serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``METRICS_PORT`` (default 9101, all
interfaces; 0 picks a free port and logs it). ``/healthz`` is 503 once the loop made no progress
for ``RELAY_STALL_SECONDS`` (30 s), the same bound after which live relays retire a stopped one
and take its partitions (see ``flask_outbox.relay``). If the port is taken (several relays on
one host), the relay runs without it and logs ``relay.health_unavailable``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Generic, TypeVar

import structlog
from sqlalchemy import Engine, Table

from flask_outbox import redrive, store
from flask_outbox.db import create_db_engine, database_now, is_postgres, keepalive_connect_args
from flask_outbox.health import HealthServer
from flask_outbox.logs import configure_logging
from flask_outbox.probes import broker_check, database_check
from flask_outbox.publisher import publisher_for
from flask_outbox.relay import OutboxRelay, RelayPolicy
from flask_outbox.routes import Route
from flask_outbox.settings import OutboxSettings
from flask_outbox.singleton import RelayAlreadyRunning, SingleRelayLock, lock_holder, lock_path
from flask_outbox.status import read_status
from flask_outbox.tracing import configure_tracing
from flask_outbox.wakeup import waiter_for

__all__ = ["EXIT_ALREADY_RUNNING", "RelayProgram"]

log = structlog.get_logger(__name__)

EXIT_ALREADY_RUNNING = 3
_STALLED_EXIT_CODE = 4
"""The exit code of a relay whose loop hung (``relay.stalled_exiting``): restart it."""
_WATCHDOG_EVERY = 1.0


Settings = TypeVar("Settings", bound=OutboxSettings)


@dataclass(frozen=True, slots=True)
class RelayProgram(Generic[Settings]):
    """What differs between the relays of two services."""

    prog: str
    table: Table
    settings: Callable[[], Settings]
    """Reads the settings from the environment (the application's ``OutboxSettings`` subclass)."""
    database_url: Callable[[Settings], str]
    routes: Mapping[str, Route]
    publisher_name: str
    expects_answer: frozenset[str] = frozenset()
    gather: float = 0.0
    """``RelayPolicy.gather``: 0 for messages someone waits on; a fraction of a second for answers."""

    def policy(self, settings: Settings) -> RelayPolicy:
        return RelayPolicy(
            batch_size=settings.relay_batch_size,
            max_backoff=settings.relay_max_backoff,
            expects_answer=self.expects_answer,
            redrive_after=settings.outbox_redrive_after_seconds,
            stall_seconds=settings.relay_stall_seconds,
            gather=self.gather,
        )

    def build(self, settings: Settings, engine: Engine) -> OutboxRelay:
        publisher = publisher_for(settings, self.routes, self.publisher_name)
        return OutboxRelay(engine, self.table, publisher, self.policy(settings))

    def main(self, argv: Sequence[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog=self.prog, description=__doc__)
        parser.add_argument("command", nargs="?", choices=["run", "status", "retry-parked"], default="run")
        parser.add_argument("--once", action="store_true", help="publish what is due now, then exit")
        parser.add_argument("--id", type=int, action="append", default=[], help="retry-parked: only this row")
        args = parser.parse_args(argv)

        settings = self.settings()
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "run":  # before the engine: its queries join the traces too
            service = settings.otel_service_name or self.publisher_name.replace("_", "-")
            configure_tracing(service, settings.otel_traces_exporter)
        settings.ensure_var_dir()
        engine = create_db_engine(
            self.database_url(settings),
            pool_size=2,
            connect_args=keepalive_connect_args(settings.relay_stall_seconds),
        )
        store.disable_jit(engine)  # once per connection, not once per claimed batch
        try:
            if args.command == "status":
                return self._status(engine, settings)
            if args.command == "retry-parked":
                return self._retry_parked(engine, args.id)
            with _sole_relay_on_sqlite(engine):
                relay = self.build(settings, engine)
                return _drain(relay) if args.once else _serve(relay, settings)
        except RelayAlreadyRunning as exc:
            print(f"relay: {exc}", file=sys.stderr)
            log.error("relay.already_running", error=str(exc))
            return EXIT_ALREADY_RUNNING
        finally:
            engine.dispose()

    def _status(self, engine: Engine, settings: Settings) -> int:
        with engine.connect() as conn:
            now = database_now(conn)
            report = read_status(conn, self.table, now)
            rule = self.policy(settings).redrive_rule()
            answers = redrive.unanswered(conn, self.table, rule, now=now)
        print(f"backlog: {report.backlog}")
        print(f"retrying: {report.retrying}")
        print(f"oldest_unpublished_age_s: {report.oldest_unpublished_age_s:.1f}")
        print(f"oldest_due_age_s: {report.oldest_due_age_s:.1f}")
        print(f"parked: {report.parked}")
        print(f"last_error: {report.last_error or '-'}")
        if self.expects_answer:
            print(f"unacknowledged: {answers.waiting}")
            print(f"unacknowledged_overdue: {answers.overdue} (no answer after {rule.after:g} s)")
            exhausted = f"{answers.exhausted} (re-driven {rule.max_redrives} times)"
            print(f"unacknowledged_redrives_exhausted: {exhausted}")
        lock = _sqlite_lock(engine)
        if lock is None:
            print(f"relays_alive: {len(report.relays)}")
        else:  # SQLite: the relay holds no database lock, only the file lock next to the database
            holder = lock_holder(lock)
            print("relays_alive: 0" if holder is None else f"relays_alive: 1 (embedded, pid {holder or '?'})")
        for relay in report.relays:
            partitions = ",".join(map(str, relay.partitions)) or "-"
            name = relay.application_name
            print(f"relay: pid={relay.pid} name={name!r} client={relay.client} partitions={partitions}")
        return 0

    def _retry_parked(self, engine: Engine, ids: list[int]) -> int:
        with engine.begin() as conn:
            count = store.retry_parked(conn, self.table, ids=ids or None)
        log.info("outbox.parked_retried", rows=count, table=self.table.name)
        print(f"retried: {count}")
        return 0


def _sqlite_lock(engine: Engine) -> Path | None:
    """The embedded relay's lock file; None on Postgres (its relays show in ``pg_locks``)."""
    if is_postgres(engine) or not engine.url.database:
        return None
    return lock_path(engine.url.database)


@contextlib.contextmanager
def _sole_relay_on_sqlite(engine: Engine) -> Iterator[None]:
    """SQLite has no row or advisory locks: hold a file lock next to the database file."""
    path = _sqlite_lock(engine)
    if path is None:
        yield
        return
    lock = SingleRelayLock(path).acquire()
    try:
        yield
    finally:
        lock.release()


def _drain(relay: OutboxRelay) -> int:
    try:
        published = relay.drain()
    finally:
        relay.disconnect()
        relay.publisher.close()
    log.info("relay.drained", published=published)
    return 0


def _serve_health(relay: OutboxRelay, settings: OutboxSettings) -> HealthServer | None:
    """``/healthz`` and ``/metrics`` in a daemon thread; a taken port is logged, not fatal."""
    relay.metrics.readiness = {
        "database": database_check(relay.engine),
        "broker": broker_check(settings.broker_url, settings.broker_folder),
    }
    try:
        server = HealthServer(relay.metrics, "0.0.0.0", settings.metrics_port).start()  # noqa: S104
    except OSError as exc:
        log.error("relay.health_unavailable", port=settings.metrics_port, error=str(exc))
        return None
    log.info("relay.health_serving", port=server.port, stall_bound_s=settings.relay_stall_seconds)
    return server


def _exit_when_stalled(relay: OutboxRelay, stop: threading.Event) -> None:
    """A loop that made no progress for the stall bound is hung, not waiting: end the process.

    Waiting for a database or a broker counts as progress (the loop goes round); only a loop stuck
    in one call does not. Its partitions are already on their way to live relays; exiting lets any
    supervisor (compose's ``restart: unless-stopped``, systemd, Kubernetes) start a fresh one. The
    process exits at once (``os._exit``): the stuck thread could never be joined.
    """
    checked = resumed = time.monotonic()
    while not stop.wait(_WATCHDOG_EVERY):
        now = time.monotonic()
        if now - checked > 5 * _WATCHDOG_EVERY:  # the whole process was stopped (SIGSTOP, a frozen VM)
            resumed = now  # the loop gets a fresh bound to find its session gone and go on
        checked = now
        age = min(relay.metrics.progress_age(), now - resumed)
        if age > relay.policy.stall_seconds:
            log.critical("relay.stalled_exiting", last_progress_age_s=round(age, 1))
            os._exit(_STALLED_EXIT_CODE)


def _serve(relay: OutboxRelay, settings: OutboxSettings) -> int:
    stop = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("relay.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    # The main connection must be seen working at least every third of the stall bound, idle or not.
    interval = min(settings.relay_poll_interval, settings.relay_stall_seconds / 3)
    waiter = waiter_for(relay.engine, stop, interval)
    health = _serve_health(relay, settings)
    log.info(
        "relay.started",
        table=relay.outbox.name,
        batch_size=relay.policy.batch_size,
        partitions=relay.policy.partitions,
        publisher=type(relay.publisher).__name__,
        database=relay.engine.url.render_as_string(),
    )
    threading.Thread(target=_exit_when_stalled, args=(relay, stop), name="watchdog", daemon=True).start()
    try:
        relay.run(stop, waiter.wait)
    finally:
        waiter.close()
        relay.publisher.close()
        if health is not None:
            health.close()
    log.info("relay.stopped")
    return 0
