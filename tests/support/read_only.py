"""A database turned read-only, as after a failover onto a replica: new transactions cannot write."""

from __future__ import annotations

import psycopg
from sqlalchemy import make_url


def set_read_only(database_url: str, read_only: bool) -> int:
    """Make every new transaction on ``database_url``'s database read-only (or writable again).

    ``default_transaction_read_only`` on the database applies to new sessions, so the existing ones
    are terminated too, as a failover would drop them, and gone when this returns (each
    ``pg_terminate_backend`` waits up to 5 s for its backend to exit). Returns how many were terminated.
    """
    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    value = "on" if read_only else "off"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.database}" SET default_transaction_read_only = {value}')
        query = (
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        row = conn.execute(query, [url.database]).fetchone()
    return int(row[0]) if row else 0
