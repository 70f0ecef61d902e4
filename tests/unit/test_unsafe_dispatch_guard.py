"""The unsafe-dispatch guard: a Celery publish inside a transaction with pending writes is reported."""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery, Task
from celery.signals import before_task_publish
from flask_outbox import (
    OutboxMessage,
    UnsafeDispatch,
    UnsafeDispatchWarning,
    add_message,
    define_outbox,
    guard,
)
from kombu.transport.memory import Channel
from sqlalchemy import Engine, String, Table, create_engine, event, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from structlog.testing import capture_logs


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20), default="")


things: Table = Thing.__table__  # type: ignore[assignment]
metadata = Base.metadata
outbox = define_outbox(metadata)


@pytest.fixture(autouse=True)
def _no_guard_left() -> Iterator[None]:
    yield
    guard.uninstall()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'guard.db'}")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"guard-{uuid.uuid4().hex[:8]}"
    yield name
    Channel.queues.pop(name, None)


@pytest.fixture
def ping(queue: str) -> Iterator[Task]:  # type: ignore[type-arg]
    """A task on a real Celery app whose broker is kombu's in-memory transport."""
    app = Celery("guard-test", broker="memory://", set_as_current=False)
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=False)

    @app.task(name="guard_test.ping")
    def _ping() -> None:
        """Never runs: the tests only publish it."""

    yield _ping
    app.close()


def published(queue: str) -> int:
    return Channel.queues[queue].qsize() if queue in Channel.queues else 0


def test_a_pending_insert_raises_in_raise_mode_and_nothing_is_published(
    engine: Engine,
    ping: Task,
    queue: str,  # type: ignore[type-arg]
) -> None:
    guard.install("raise")
    with Session(engine) as session:
        session.execute(insert(things).values(name="a"))
        with pytest.raises(UnsafeDispatch, match=r"guard_test\.ping"):
            ping.delay()
    assert published(queue) == 0


def test_an_outbox_row_or_a_core_write_counts_as_pending(engine: Engine, ping: Task) -> None:  # type: ignore[type-arg]
    guard.install("raise")
    with Session(engine) as session:
        add_message(session, outbox, OutboxMessage("thing.made", "thing", "1", {"id": 1}))
        with pytest.raises(UnsafeDispatch):
            ping.apply_async()
    with Session(engine) as session, session.begin():
        session.execute(select(things)).all()
        session.execute(things.update().values(name="b"))
        with pytest.raises(UnsafeDispatch):
            ping.app.send_task("guard_test.ping")


def test_orm_changes_count_as_pending_flushed_or_not(engine: Engine, ping: Task) -> None:  # type: ignore[type-arg]
    guard.install("raise")
    with Session(engine) as session:
        session.add(Thing(name="new"))  # no flush, no connection yet
        with pytest.raises(UnsafeDispatch):
            ping.delay()
        session.flush()
        assert not session.new
        with pytest.raises(UnsafeDispatch):
            ping.delay()
        session.commit()
        thing = session.scalars(select(Thing)).one()
        thing.name = "dirty"
        with pytest.raises(UnsafeDispatch):
            ping.delay()
        session.flush()
        session.commit()
        session.delete(thing)
        with pytest.raises(UnsafeDispatch):
            ping.delay()


def test_warn_mode_warns_at_the_caller_logs_an_error_and_publishes(
    engine: Engine,
    ping: Task,
    queue: str,  # type: ignore[type-arg]
) -> None:
    guard.install("warn")
    with Session(engine) as session, capture_logs() as logs:
        session.execute(insert(things).values(name="a"))
        with pytest.warns(UnsafeDispatchWarning, match="pending writes") as caught:
            ping.delay()
    assert caught[0].filename == __file__
    assert [entry["event"] for entry in logs] == ["outbox.unsafe_dispatch"]
    assert logs[0]["log_level"] == "error"
    assert published(queue) == 1


def test_warn_mode_raises_where_warnings_are_errors(engine: Engine, ping: Task) -> None:  # type: ignore[type-arg]
    guard.install("warn")
    with Session(engine) as session:
        session.execute(insert(things).values(name="a"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(UnsafeDispatch) as raised:
                ping.delay()
    assert isinstance(raised.value.__cause__, UnsafeDispatchWarning)


def test_after_commit_or_rollback_nothing_is_reported(
    engine: Engine,
    ping: Task,
    queue: str,  # type: ignore[type-arg]
) -> None:
    guard.install("raise")
    with Session(engine) as session:
        session.execute(insert(things).values(name="a"))
        session.commit()
        ping.delay()
        session.execute(insert(things).values(name="b"))
        session.rollback()
        ping.delay()
    with Session(engine) as session, session.begin():
        session.execute(insert(things).values(name="c"))
    ping.delay()
    assert published(queue) == 3


def test_a_read_only_transaction_is_not_reported(engine: Engine, ping: Task, queue: str) -> None:  # type: ignore[type-arg]
    guard.install("raise")
    with Session(engine) as session, session.begin():
        session.execute(select(things)).all()
        ping.delay()
    assert published(queue) == 1


def test_another_threads_open_transaction_is_not_reported(
    engine: Engine,
    ping: Task,
    queue: str,  # type: ignore[type-arg]
) -> None:
    guard.install("raise")
    wrote, done = threading.Event(), threading.Event()

    def writer() -> None:
        with Session(engine) as session:
            session.execute(insert(things).values(name="elsewhere"))
            wrote.set()
            done.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert wrote.wait(10)
        ping.delay()
    finally:
        done.set()
        thread.join()
    assert published(queue) == 1


def test_a_released_savepoint_keeps_the_outer_writes_pending(engine: Engine, ping: Task) -> None:  # type: ignore[type-arg]
    guard.install("raise")
    with Session(engine) as session:
        session.execute(insert(things).values(name="outer"))
        with session.begin_nested():
            session.execute(insert(things).values(name="inner"))
        with pytest.raises(UnsafeDispatch):
            ping.delay()


def test_install_is_idempotent_and_uninstall_removes_every_listener(
    engine: Engine,
    ping: Task,
    queue: str,  # type: ignore[type-arg]
) -> None:
    receivers = len(before_task_publish.receivers)
    guard.install("warn")
    guard.install("raise")
    assert guard.mode() == "raise"
    assert len(before_task_publish.receivers) == receivers + 1
    assert event.contains(Session, "after_flush", guard._after_flush)

    guard.install("off")
    assert guard.mode() == "off"
    assert len(before_task_publish.receivers) == receivers
    assert not event.contains(Session, "after_flush", guard._after_flush)
    assert not event.contains(Engine, "after_cursor_execute", guard._after_cursor_execute)
    with Session(engine) as session:
        session.execute(insert(things).values(name="a"))
        ping.delay()
    assert published(queue) == 1
