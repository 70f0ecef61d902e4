"""The cursor codec: every position round-trips, and any other token is ``InvalidCursor``, never a crash."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from order_service import cursor

EXAMPLES = settings(max_examples=300, deadline=None, database=None, derandomize=True)

zones = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)),
)
instants = st.datetimes(timezones=st.just(UTC)) | st.datetimes(
    min_value=datetime(2, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive; `timezones` makes them aware
    max_value=datetime(9998, 12, 31),  # noqa: DTZ001
    timezones=zones,
)
"""Aware datetimes anywhere UTC can hold them, in any offset (a day away from the ends)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _decoded_or_refused(token: str) -> cursor.Position | None:
    """The contract of ``decode`` for any input: a UTC position, or ``InvalidCursor``; nothing else."""
    try:
        position = cursor.decode(token)
    except cursor.InvalidCursor:
        return None
    assert position.created_at.utcoffset() == timedelta(0)
    assert cursor.encode(position.created_at, position.order_id) == token
    return position


@EXAMPLES
@given(created_at=instants, order_id=st.uuids())
@example(created_at=datetime.min.replace(tzinfo=UTC), order_id=uuid.UUID(int=0))
@example(created_at=datetime.max.replace(tzinfo=UTC), order_id=uuid.UUID(int=2**128 - 1))
def test_every_position_round_trips_in_utc(created_at: datetime, order_id: uuid.UUID) -> None:
    token = cursor.encode(created_at, order_id)

    assert len(token) <= cursor.MAX_LENGTH
    assert cursor.decode(token) == cursor.Position(created_at.astimezone(UTC), order_id)


@EXAMPLES
@given(token=st.text(max_size=300))
def test_any_text_is_a_position_or_refused(token: str) -> None:
    _decoded_or_refused(token)


@EXAMPLES
@given(raw=st.binary(max_size=150))
def test_any_base64_payload_is_a_position_or_refused(raw: bytes) -> None:
    _decoded_or_refused(_b64(raw))


@EXAMPLES
@given(
    created_at=instants,
    order_id=st.uuids(),
    at=st.integers(min_value=0),
    replacement=st.sampled_from("AZaz09-_=+/!. ") | st.characters(),
)
def test_a_mutated_cursor_is_a_position_or_refused(
    created_at: datetime, order_id: uuid.UUID, at: int, replacement: str
) -> None:
    token = cursor.encode(created_at, order_id)
    at %= len(token)

    _decoded_or_refused(token[:at] + replacement + token[at + 1 :])
    _decoded_or_refused(token[:at] + token[at + 1 :])
    _decoded_or_refused(token[:at] + replacement + token[at:])


@EXAMPLES
@given(
    naive=st.datetimes(),
    order_id=st.uuids(),
    separator=st.sampled_from("T "),
    spec=st.sampled_from(["auto", "seconds", "microseconds"]),
)
def test_a_naive_timestamp_is_refused(
    naive: datetime, order_id: uuid.UUID, separator: str, spec: str
) -> None:
    token = _b64(f"{naive.isoformat(separator, spec)}|{order_id}".encode())

    with pytest.raises(cursor.InvalidCursor):
        cursor.decode(token)


@pytest.mark.parametrize(
    "created_at",
    [
        "0001-01-01T00:00:00+01:00",  # before the first instant UTC can hold
        "0001-01-01T00:59:59.999999+01:00",
        "9999-12-31T23:59:59-00:01",  # after the last
        "9999-12-31T23:00:00-23:59",
        "2026-01-01T12:00:00+05:30",  # a valid instant, but not in the form the API issues
        "2026-01-01T12:00:00Z",
        "2026-01-01 12:00:00+00:00",
        "20260101T120000+0000",
    ],
)
def test_timestamps_the_api_never_issues_are_refused(created_at: str) -> None:
    with pytest.raises(cursor.InvalidCursor):
        cursor.decode(_b64(f"{created_at}|{uuid.uuid4()}".encode()))


def test_encoding_a_naive_timestamp_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        cursor.encode(datetime(2026, 1, 1), uuid.uuid4())  # noqa: DTZ001 - the point
