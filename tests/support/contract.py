"""Real and mutated cursors and order ids for fuzzing the order API (schemathesis + hypothesis).

Random strings almost never decode as a cursor, so fuzzing with them alone only ever tests the
first check. These strategies start from tokens the API really issued (paging real orders, also at
both ends of the calendar and with tied timestamps) and mutate them where bugs live: the timestamp
without its zone, moved to another offset or year, re-encoded in other base64 flavours, and plain
character edits, truncations and insertions.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import strategies as st
from sqlalchemy import update

from order_service.extensions import db
from order_service.models import Order

__all__ = ["Issued", "cursors", "issue", "mutated_cursors", "order_ids", "sendable_query"]

_LINE = {"sku": "A", "quantity": 1, "unit_amount": 100}
MOMENTS = [
    datetime.min.replace(tzinfo=UTC),  # the first instant UTC can hold
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),  # three orders share it: the id breaks the tie
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 6, 30, 12, 0, 0, 123_456, tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),  # the last
]


@dataclass(frozen=True)
class Issued:
    """What the API handed out: every ``next_cursor`` seen while paging, and every order id."""

    cursors: tuple[str, ...]
    order_ids: tuple[str, ...]


def issue(app: Flask, client: FlaskClient) -> Issued:
    """Place orders at ``MOMENTS`` (and now), page through them every way, and keep what was issued."""
    ids = [
        client.post(
            "/orders", json={"customer_id": f"cus_{n % 3}", "currency": "EUR", "lines": [_LINE]}
        ).get_json()["id"]
        for n in range(len(MOMENTS) + 3)
    ]
    with app.app_context():
        for order_id, moment in zip(ids, MOMENTS, strict=False):
            db.session.execute(update(Order).where(Order.id == uuid.UUID(order_id)).values(created_at=moment))
        db.session.commit()
    seen: set[str] = set()
    for limit in (1, 2, 3):
        for filters in (
            {},
            {"customer_id": "cus_0"},
            {"status": "placed"},
            {"created_lt": "2026-01-02T00:00:00Z"},
        ):
            cursor: str | None = None
            for _ in range(len(ids) + 1):
                query: dict[str, Any] = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
                page = client.get("/orders", query_string=query)
                assert page.status_code == 200, page.get_data(as_text=True)
                cursor = page.get_json()["next_cursor"]
                if cursor is None:
                    break
                seen.add(cursor)
    return Issued(cursors=tuple(sorted(seen)), order_ids=tuple(ids))


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode()


def _unb64(token: str) -> str:
    return base64.urlsafe_b64decode(token).decode()


_TIMESTAMP_EDITS: list[Callable[[str], str]] = [
    lambda ts: ts.removesuffix("+00:00"),  # naive
    lambda ts: ts.replace("+00:00", "Z"),
    lambda ts: ts.replace("+00:00", "+01:00"),
    lambda ts: ts.replace("+00:00", "-01:00"),
    lambda ts: ts.replace("+00:00", "+23:59"),
    lambda ts: ts.replace("+00:00", "-23:59"),
    lambda ts: ts.replace("+00:00", "+24:00"),
    lambda ts: "0001" + ts[4:],
    lambda ts: "9999" + ts[4:],
    lambda ts: "0000" + ts[4:],
    lambda ts: "10000" + ts[4:],
    lambda ts: ts.replace("T", " "),
    lambda ts: ts.replace("T", "t"),
    lambda ts: ts[:19] + ".999999999" + ts[-6:],
    lambda ts: ts[:10],  # a date
    lambda ts: ts[:10] + "T24:00:00+00:00",
    lambda ts: ts[:5] + "02-30" + ts[10:],
    lambda ts: "",
    lambda ts: ts + "\x00",
    lambda ts: ts + "\u00a0",
    lambda ts: "-" + ts,
]
_ID_EDITS: list[Callable[[str], str]] = [
    str.upper,
    lambda i: "{" + i + "}",
    lambda i: "urn:uuid:" + i,
    lambda i: i.replace("-", ""),
    lambda i: i[:-1],
    lambda i: i + "0",
    lambda i: "",
    lambda i: str(uuid.UUID(int=0)),
    lambda i: str(uuid.UUID(int=2**128 - 1)),
]
_ENCODINGS: list[Callable[[str], str]] = [
    _b64,
    lambda text: _b64(text).rstrip("="),
    lambda text: base64.b64encode(text.encode()).decode(),  # standard alphabet: + and /
    lambda text: _b64(text) + "\n",
    lambda text: " " + _b64(text),
    lambda text: _b64(text).replace("=", "%3D"),
]


@st.composite
def _semantic(draw: st.DrawFn, real: st.SearchStrategy[str]) -> str:
    """Decode a real cursor, change its timestamp and/or id the way a crafted request would, re-encode."""
    created_at, _, order_id = _unb64(draw(real)).partition("|")
    if draw(st.booleans()):
        created_at = draw(st.sampled_from(_TIMESTAMP_EDITS))(created_at)
    if draw(st.booleans()):
        order_id = draw(st.sampled_from(_ID_EDITS))(order_id)
    separator = draw(st.sampled_from(["|", "|", "||", ",", ""]))
    return draw(st.sampled_from(_ENCODINGS))(f"{created_at}{separator}{order_id}")


@st.composite
def _edited(draw: st.DrawFn, real: st.SearchStrategy[str]) -> str:
    """A real cursor with a character replaced, inserted or removed, or cut short."""
    token = draw(real)
    at = draw(st.integers(min_value=0, max_value=len(token) - 1))
    char = draw(st.sampled_from("AZaz09-_=+/") | st.characters(codec="utf-8"))
    return draw(
        st.sampled_from(
            [
                token[:at] + char + token[at + 1 :],
                token[:at] + char + token[at:],
                token[:at] + token[at + 1 :],
                token[:at],
            ]
        )
    )


def mutated_cursors(issued: Issued) -> st.SearchStrategy[str]:
    real = st.sampled_from(issued.cursors)
    return _semantic(real) | _edited(real)


def cursors(issued: Issued) -> st.SearchStrategy[tuple[str, bool]]:
    """``(cursor, issued_as_is)``: a mutated cursor, or one the API issued (listed last: hypothesis
    draws the first alternative more often, and mutations are where the bugs are)."""
    real = st.sampled_from(issued.cursors)
    return st.tuples(mutated_cursors(issued), st.just(False)) | st.tuples(real, st.just(True))


def order_ids(issued: Issued) -> st.SearchStrategy[str]:
    """Real order ids, and the same ids edited (case, braces, URN, truncated) or replaced."""
    real = st.sampled_from(issued.order_ids)
    edited = st.builds(lambda i, edit: edit(i), real, st.sampled_from(_ID_EDITS))
    return real | edited | st.uuids().map(str) | st.just((datetime.now(UTC) + timedelta(days=1)).isoformat())


def _sendable(value: object) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_sendable(item) for item in value)
    return value is not None and not isinstance(value, dict)


def sendable_query(query: dict[str, Any] | None) -> bool:
    """Whether every value reaches the server as a parameter (a scalar, or a non-empty list of them).

    Some generated "invalid" values cannot be sent at all (null, an object, an empty array): the client
    leaves the parameter out, which is valid, so such a negative case proves nothing.
    """
    return all(_sendable(value) for value in (query or {}).values())
