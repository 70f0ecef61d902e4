"""The shared jittered backoff: bounded by its ceiling for any attempt, however many."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest
from flask_outbox import store
from flask_outbox.backoff import jittered_backoff
from flask_outbox.relay import RelayPolicy

HUGE = [1_025, 1_026, 1_100, 10_000, 2**31, sys.maxsize, 10**100]
"""``2 ** (attempt - 1)`` stops fitting a float at 1 025 (OverflowError before the fix)."""


@pytest.mark.parametrize("attempt", HUGE)
def test_backoff_after_any_number_of_attempts_is_the_ceiling_jittered(attempt: int) -> None:
    delays = [jittered_backoff(attempt, 0.5, 300.0) for _ in range(50)]

    assert all(150.0 <= delay <= 300.0 for delay in delays)


@pytest.mark.parametrize("attempt", HUGE)
def test_relay_and_store_back_off_after_any_number_of_attempts(attempt: int) -> None:
    policy = RelayPolicy(base_backoff=0.5, max_backoff=300.0)

    assert timedelta(seconds=150) <= policy.backoff(attempt) <= timedelta(seconds=300)
    assert timedelta(seconds=150) <= store.backoff(attempt, 0.5, 300.0) <= timedelta(seconds=300)


@pytest.mark.parametrize("attempt", [-5, 0, 1])
def test_first_retry_waits_between_half_the_base_and_the_base(attempt: int) -> None:
    assert all(0.25 <= jittered_backoff(attempt, 0.5, 300.0) <= 0.5 for _ in range(50))


def test_backoff_doubles_until_the_ceiling() -> None:
    tops = [max(jittered_backoff(attempt, 1.0, 40.0) for _ in range(200)) for attempt in range(1, 9)]

    for attempt, top in enumerate(tops, start=1):
        assert min(2.0 ** (attempt - 1), 40.0) / 2 <= top <= min(2.0 ** (attempt - 1), 40.0)
