"""The ``Outbox`` extension: a message in the current ``db.session`` transaction; it never commits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from blinker import Namespace
from celery import Celery
from flask import Flask
from flask_outbox import Outbox, UnsafeDispatch, guard
from flask_sqlalchemy import SQLAlchemy
from kombu.transport.memory import Channel
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

signals = Namespace()
thing_made = signals.signal("thing-made")


class Base(DeclarativeBase):
    pass


@pytest.fixture(autouse=True)
def _no_guard_left() -> Iterator[None]:
    yield
    guard.uninstall()


def make_app(tmp_path: Path, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}", **config)
    return app


@pytest.fixture
def db() -> SQLAlchemy:
    return SQLAlchemy(model_class=Base)


@pytest.fixture
def app(tmp_path: Path, db: SQLAlchemy) -> Iterator[Flask]:
    app = make_app(tmp_path)
    db.init_app(app)
    yield app
    with app.app_context():
        db.engine.dispose()


def test_a_message_added_by_a_receiver_commits_with_the_transaction(app: Flask, db: SQLAlchemy) -> None:
    outbox = Outbox(app, db)

    @thing_made.connect_via(app)
    def _announce(sender: Flask, *, name: str, **_: Any) -> None:
        outbox.add("thing.made", {"name": name}, aggregate_type="thing", aggregate_id=name, headers={"v": 1})

    with app.app_context():
        db.create_all()
        thing_made.send(app, name="a")
        assert db.session.scalar(select(outbox.table.c.topic)) == "thing.made"  # in the open transaction
        db.session.commit()
    with app.app_context():
        rows = db.session.execute(select(outbox.table)).mappings().all()
    assert [(r["topic"], r["aggregate_id"], r["payload"], r["headers"]) for r in rows] == [
        ("thing.made", "a", {"name": "a"}, {"v": 1})
    ]
    assert rows[0]["published_at"] is None


def test_a_message_added_in_a_transaction_that_rolls_back_leaves_no_row(app: Flask, db: SQLAlchemy) -> None:
    outbox = Outbox(db=db)
    outbox.init_app(app)
    with app.app_context():
        db.create_all()
        message_id = outbox.add("thing.made", {}, aggregate_type="thing", aggregate_id="b")
        assert isinstance(message_id, uuid.UUID)
        db.session.rollback()
    with app.app_context():
        assert db.session.execute(select(outbox.table)).all() == []


def test_adding_outside_an_app_context_is_a_clear_error(app: Flask, db: SQLAlchemy) -> None:
    outbox = Outbox(app, db)
    with pytest.raises(RuntimeError, match="needs an app context"):
        outbox.add("thing.made", {}, aggregate_type="thing", aggregate_id="c")


def test_registers_once_and_names_its_table(app: Flask, db: SQLAlchemy) -> None:
    outbox = Outbox(app, db, table="thing_outbox")
    assert app.extensions["outbox"] is outbox
    assert db.metadata.tables["thing_outbox"] is outbox.table
    assert Outbox(db=db, table="thing_outbox").table is outbox.table  # one table per name and metadata
    with pytest.raises(RuntimeError, match="already registered"):
        outbox.init_app(app)
    with pytest.raises(TypeError, match="db"):
        Outbox(app)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


def test_the_guard_is_on_in_testing_and_debug_only(tmp_path: Path) -> None:
    Outbox(make_app(tmp_path), SQLAlchemy())
    assert guard.mode() == "off"
    Outbox(make_app(tmp_path, DEBUG=True), SQLAlchemy())
    assert guard.mode() == "warn"
    Outbox(make_app(tmp_path, TESTING=True, OUTBOX_UNSAFE_DISPATCH="raise"), SQLAlchemy())
    assert guard.mode() == "raise"
    with pytest.raises(ValueError, match="OUTBOX_UNSAFE_DISPATCH"):
        Outbox(make_app(tmp_path, TESTING=True, OUTBOX_UNSAFE_DISPATCH="loud"), SQLAlchemy())


def test_a_testing_app_reports_a_task_published_inside_its_request_transaction(tmp_path: Path) -> None:
    db = SQLAlchemy(model_class=Base)
    app = make_app(tmp_path, TESTING=True)
    db.init_app(app)
    Outbox(app, db)
    celery = Celery("extension-test", broker="memory://", set_as_current=False)
    celery.conf.task_default_queue = queue = f"extension-{uuid.uuid4().hex[:8]}"
    with app.app_context():
        db.create_all()
        db.session.add(Item(name="x"))
        with pytest.raises(UnsafeDispatch):  # warn mode, and pytest makes warnings errors
            celery.send_task("items.index", args=("x",))
        db.session.commit()
        celery.send_task("items.index", args=("x",))  # after the commit: fine
        db.engine.dispose()
    celery.close()
    Channel.queues.pop(queue, None)
