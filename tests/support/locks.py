"""Sessions blocked on a lock: how a race test knows the party it holds back is waiting in the database."""

from __future__ import annotations

from sqlalchemy import Engine, text

__all__ = ["waiting_on_a_lock"]


def waiting_on_a_lock(engine: Engine, query_like: str = "%") -> int:
    """Sessions of ``engine``'s database (the test's own) blocked on a lock in a query LIKE ``query_like``."""
    with engine.connect() as conn:
        waiting = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE :query_like"
            ),
            {"query_like": query_like},
        )
    return int(waiting or 0)
