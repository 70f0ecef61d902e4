"""The order relay process: ``python -m order_service.relay [--once | status]``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta
from types import FrameType

import structlog
from sqlalchemy import Engine, func, select

from order_service.models import outbox
from shared.broker import publishing_app
from shared.config import Settings
from shared.contracts import ROUTES
from shared.db import create_db_engine, utcnow
from shared.logs import configure_logging
from shared.outbox.publisher import CeleryPublisher
from shared.outbox.relay import OutboxRelay, RelayPolicy
from shared.outbox.wakeup import waiter_for

__all__ = ["build_relay", "main"]

log = structlog.get_logger(__name__)


def build_relay(settings: Settings, engine: Engine) -> OutboxRelay:
    publisher = CeleryPublisher(publishing_app(settings, "order_relay"), ROUTES, settings.queue_prefix)
    policy = RelayPolicy(
        batch_size=settings.relay_batch_size,
        max_attempts=settings.relay_max_attempts,
        max_backoff=settings.relay_max_backoff,
        retention=timedelta(seconds=settings.outbox_retention_seconds),
    )
    return OutboxRelay(engine, outbox, publisher, policy)


def _status(engine: Engine) -> int:
    t = outbox
    pending = (t.c.published_at.is_(None), t.c.parked_at.is_(None))
    with engine.connect() as conn:
        backlog = conn.scalar(select(func.count()).where(*pending)) or 0
        oldest = conn.scalar(select(func.min(t.c.created_at)).where(*pending))
        parked = conn.scalar(select(func.count()).where(t.c.parked_at.is_not(None))) or 0
        last_error = conn.scalar(
            select(t.c.last_error)
            .where(t.c.last_error.is_not(None), t.c.published_at.is_(None))
            .order_by(t.c.id.desc())
        )
    age = (utcnow() - oldest).total_seconds() if oldest else 0.0
    print(f"backlog: {backlog}")
    print(f"oldest_unpublished_age_s: {age:.1f}")
    print(f"parked: {parked}")
    print(f"last_error: {last_error or '-'}")
    return 0


def _serve(relay: OutboxRelay, settings: Settings) -> int:
    stop = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("relay.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    waiter = waiter_for(relay.engine, stop, settings.relay_poll_interval)
    log.info(
        "relay.started", batch_size=relay.policy.batch_size, database=relay.engine.url.render_as_string()
    )
    try:
        relay.run(stop, waiter.wait)
    finally:
        waiter.close()
        relay.publisher.close()
    log.info("relay.stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m order_service.relay", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["run", "status"], default="run")
    parser.add_argument("--once", action="store_true", help="publish what is due now, then exit")
    args = parser.parse_args(argv)

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.ensure_var_dir()
    engine = create_db_engine(settings.orders_database_url, pool_size=2)
    try:
        if args.command == "status":
            return _status(engine)
        relay = build_relay(settings, engine)
        if args.once:
            published = relay.drain()
            relay.publisher.close()
            log.info("relay.drained", published=published)
            return 0
        return _serve(relay, settings)
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
