"""``relay status`` on SQLite sees the embedded relay through its file lock, not ``pg_locks``.

The lock is taken in this process on another open file, exactly as a relay process takes it: ``flock``
locks belong to an open file, so the probe conflicts with it as it would with another process's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flask_outbox.singleton import RelayAlreadyRunning, SingleRelayLock, lock_holder, lock_path
from sqlalchemy import create_engine

from order_service.models import outbox
from order_service.relay import main
from shared.config import Settings


@pytest.fixture
def embedded_env(sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of ``make run`` (no database or broker URL) with an empty orders outbox."""
    for name in ("ORDERS_DATABASE_URL", "INVOICES_DATABASE_URL", "BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAR_DIR", str(sqlite_settings.var_dir))
    engine = create_engine(sqlite_settings.orders_database_url)
    outbox.metadata.create_all(engine, tables=[outbox])
    engine.dispose()
    return Path(sqlite_settings.orders_database_url.removeprefix("sqlite:///"))


def test_lock_holder_is_the_relay_holding_the_lock_and_none_after_it_let_go(tmp_path: Path) -> None:
    path = lock_path(str(tmp_path / "orders.sqlite3"))
    assert lock_holder(path) is None  # no file yet
    lock = SingleRelayLock(path).acquire()
    try:
        assert lock_holder(path) == os.getpid()
        assert lock_holder(path) == os.getpid(), "the probe must not take the lock from its holder"
    finally:
        lock.release()
    assert lock_holder(path) is None  # the file stays, the lock is gone
    SingleRelayLock(path).acquire().release()  # and a probe left nothing behind that blocks a relay


def test_a_second_relay_still_cannot_take_a_held_lock(tmp_path: Path) -> None:
    path = lock_path(str(tmp_path / "orders.sqlite3"))
    lock = SingleRelayLock(path).acquire()
    try:
        with pytest.raises(RelayAlreadyRunning, match=f"pid {os.getpid()}"):
            SingleRelayLock(path).acquire()
    finally:
        lock.release()


def test_relay_status_on_sqlite_reports_the_running_embedded_relay(
    embedded_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 0
    assert "relays_alive: 0" in capsys.readouterr().out

    lock = SingleRelayLock(lock_path(str(embedded_env))).acquire()
    try:
        assert main(["status"]) == 0
        assert f"relays_alive: 1 (embedded, pid {os.getpid()})" in capsys.readouterr().out
    finally:
        lock.release()
