"""Relations between settings are checked when the settings are read: a bad pair refuses to start, naming
both variables; the shipped defaults pass."""

from __future__ import annotations

import pytest
from flask_outbox.broker import worker_broker_config
from flask_outbox.settings import LATENESS_BOUND_SECONDS, OutboxSettings, restore_sweep_seconds

from shared.config import Settings


def test_the_shipped_defaults_pass_every_relation() -> None:
    assert Settings().relation_problems() == []
    assert OutboxSettings(broker_url="redis://127.0.0.1:6379/0").relation_problems() == []


def test_a_redrive_no_later_than_the_visibility_timeout_and_its_sweep_is_refused() -> None:
    """The old defaults (60 s, 60 s): an ordinary worker kill would cost a re-drive of each task it held."""
    with pytest.raises(ValueError, match=r"OUTBOX_REDRIVE_AFTER_SECONDS=60 .*BROKER_VISIBILITY_TIMEOUT=60"):
        Settings(outbox_redrive_after_seconds=60, broker_visibility_timeout=60)
    with pytest.raises(ValueError, match=r"OUTBOX_REDRIVE_AFTER_SECONDS=70 .*BROKER_VISIBILITY_TIMEOUT=60"):
        Settings(outbox_redrive_after_seconds=70)  # 60 s + the 10 s sweep: not strictly later
    Settings(outbox_redrive_after_seconds=71)


def test_the_relation_reads_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_VISIBILITY_TIMEOUT", "120")
    with pytest.raises(ValueError, match=r"OUTBOX_REDRIVE_AFTER_SECONDS=90 .*BROKER_VISIBILITY_TIMEOUT=120"):
        Settings()
    monkeypatch.setenv("OUTBOX_REDRIVE_AFTER_SECONDS", "180")
    assert Settings().outbox_redrive_after_seconds == 180


def test_the_sweep_is_the_one_the_worker_configures() -> None:
    for timeout in (1, 4, 30, 60, 3600):
        settings = Settings(
            broker_url="redis://127.0.0.1:6379/0",
            broker_visibility_timeout=timeout,
            outbox_redrive_after_seconds=timeout + 11,
        )
        options = worker_broker_config(settings)["broker_transport_options"]
        assert options["unacked_restore_interval"] == restore_sweep_seconds(timeout)


def test_a_backoff_ceiling_that_breaks_the_lateness_bound_is_refused() -> None:
    """The old default RELAY_MAX_BACKOFF=300 alone outlasts the 120 s after the last fault."""
    with pytest.raises(ValueError, match="RELAY_MAX_BACKOFF=300 plus RELAY_STALL_SECONDS=30"):
        Settings(relay_max_backoff=300)
    with pytest.raises(ValueError, match="RELAY_MAX_BACKOFF=60 plus RELAY_STALL_SECONDS=60"):
        Settings(relay_max_backoff=60, relay_stall_seconds=60)
    assert LATENESS_BOUND_SECONDS == 120
    Settings(relay_max_backoff=60, relay_stall_seconds=30)


def test_every_broken_relation_is_named_at_once() -> None:
    with pytest.raises(ValueError, match=r"OUTBOX_REDRIVE_AFTER_SECONDS.*; RELAY_MAX_BACKOFF"):
        Settings(outbox_redrive_after_seconds=10, relay_max_backoff=300)
