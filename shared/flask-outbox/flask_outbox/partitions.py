"""Partition ownership between relays, held as Postgres session-level advisory locks.

A row's partition is ``bucket % partitions``; one relay at a time holds a partition's lock, so
one relay at a time publishes an aggregate's rows, in id order. Locks live on the relay's
database session: if the relay dies or its connection drops, the server frees them at once, and
the other relays take the partitions over at their next rebalance. Each relay also holds a
*shared* presence lock, so ``pg_locks`` counts the live relays without any table of our own.

A relay that stops without its session ending (SIGSTOP, a frozen VM, a host gone without a FIN)
would hold its locks for ever, or for the TCP keepalive default (~2 h). So live relays *retire*
it: every relay's main connection runs a query at least every ``stall_seconds / 3`` (its
rebalance or claim), so a presence holder whose backend has been idle (``idle``, ``idle in
transaction``) or blocked writing to a client that does not read (``active`` on ``ClientWrite``)
for longer than ``stall_seconds`` has stopped, and a live relay ends it with
``pg_terminate_backend``, which frees its advisory and row locks. A relay busy in the database
(``active`` on anything else) is never retired. Needs the right to signal the holder's backend
(the same role, or ``pg_signal_backend``): without it, retirement is logged and skipped.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

__all__ = ["LockKeys", "PartitionLeases", "RelayHolding", "RetiredRelay", "relay_holdings"]

log = structlog.get_logger(__name__)

_CENSUS = text(
    """
    SELECT l.classid::bigint AS classid, l.objid::bigint AS objid, l.pid AS pid
    FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint IN (:presence, :partition)
    """
)


_STALLED = text(
    """
    SELECT a.pid, coalesce(a.application_name, '') AS app, coalesce(a.client_addr::text, 'local') AS client,
           a.state, coalesce(a.wait_event, '') AS wait_event,
           extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS stalled_s
    FROM pg_stat_activity AS a
    WHERE a.pid = ANY(:pids) AND a.pid <> pg_backend_pid()
      AND (a.state <> 'active' OR a.wait_event = 'ClientWrite')
      AND a.state_change < clock_timestamp() - make_interval(secs => :stall)
    """
)


def _key(label: str) -> int:
    """A stable positive int4, the first half of a two-key advisory lock."""
    return zlib.crc32(label.encode()) & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class LockKeys:
    """Advisory lock namespaces of one outbox table (two tables in one database never collide)."""

    partition: int
    presence: int
    purge: int

    @classmethod
    def for_table(cls, table_name: str) -> LockKeys:
        return cls(
            partition=_key(f"{table_name}:partition"),
            presence=_key(f"{table_name}:presence"),
            purge=_key(f"{table_name}:purge"),
        )


@dataclass(frozen=True, slots=True)
class RelayHolding:
    """One live relay session and the partitions it holds (for ``status``)."""

    pid: int
    application_name: str
    client: str
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RetiredRelay:
    """A relay session that stopped making progress and was terminated by a live relay."""

    pid: int
    application_name: str
    client: str
    state: str
    stalled_s: float
    partitions: tuple[int, ...]


def _census(conn: Connection, keys: LockKeys) -> tuple[set[int], dict[int, set[int]]]:
    """Live relay backends (by pid) and which pid holds which partition."""
    alive: set[int] = set()
    held: dict[int, set[int]] = {}
    rows = conn.execute(_CENSUS, {"presence": keys.presence, "partition": keys.partition})
    for row in rows:
        if row.classid == keys.presence:
            alive.add(row.pid)
        else:
            held.setdefault(row.pid, set()).add(row.objid)
    return alive, held


@dataclass
class PartitionLeases:
    """This relay's share of the partitions: ``ceil(partitions / relays alive)``, rebalanced on demand."""

    keys: LockKeys
    partitions: int
    stall_seconds: float | None = None
    """Retire relay sessions idle longer than this (``None``: never)."""
    owned: set[int] = field(default_factory=set)
    _present: bool = False

    def reset(self) -> None:
        """Forget everything: the session that held the locks is gone, and so are the locks."""
        self.owned.clear()
        self._present = False

    def retire_stalled(self, conn: Connection) -> list[RetiredRelay]:
        """Terminate the sessions of relays that stopped making progress; their locks end with them.

        Runs in a savepoint: a refused ``pg_terminate_backend`` (no right to signal) is logged, and
        the caller's transaction goes on.
        """
        if self.stall_seconds is None:
            return []
        alive, held = _census(conn, self.keys)
        if not alive:
            return []
        retired: list[RetiredRelay] = []
        # PG 14+ waits (up to 5 s) until the backend is gone, so its locks are free on return.
        wait = ", 5000" if (conn.dialect.server_version_info or (0,)) >= (14,) else ""
        terminate = text(f"SELECT pg_terminate_backend(:pid{wait})")
        try:
            with conn.begin_nested():
                for row in conn.execute(_STALLED, {"pids": sorted(alive), "stall": self.stall_seconds}).all():
                    if not conn.scalar(terminate, {"pid": row.pid}):  # already gone (another relay was first)
                        continue
                    relay = RetiredRelay(
                        row.pid,
                        row.app,
                        row.client,
                        row.state,
                        row.stalled_s,
                        tuple(sorted(held.get(row.pid, ()))),
                    )
                    retired.append(relay)
                    log.warning(
                        "relay.stalled_relay_retired",
                        pid=relay.pid,
                        application_name=relay.application_name,
                        client=relay.client,
                        state=relay.state,
                        wait_event=row.wait_event,
                        stalled_s=round(relay.stalled_s, 1),
                        stall_bound_s=self.stall_seconds,
                        partitions=list(relay.partitions),
                    )
        except DBAPIError as exc:
            log.warning("relay.retire_refused", error=str(exc.orig), retired_before_refusal=len(retired))
        return retired

    def rebalance(self, conn: Connection) -> frozenset[int]:
        """Announce presence, give back what exceeds the fair share, take free partitions up to it."""
        if not self._present:
            conn.execute(text("SELECT pg_advisory_lock_shared(:k, 0)"), {"k": self.keys.presence})
            self._present = True
        alive, held = _census(conn, self.keys)
        share = math.ceil(self.partitions / max(len(alive), 1))
        before = frozenset(self.owned)
        for partition in sorted(self.owned, reverse=True)[: max(len(self.owned) - share, 0)]:
            conn.execute(
                text("SELECT pg_advisory_unlock(:k, :p)"), {"k": self.keys.partition, "p": partition}
            )
            self.owned.discard(partition)
        taken = set().union(*held.values()) if held else set()
        start = os.getpid() % self.partitions
        for offset in range(self.partitions):
            if len(self.owned) >= share:
                break
            partition = (start + offset) % self.partitions
            if partition in taken or partition in self.owned:
                continue
            locked = conn.scalar(
                text("SELECT pg_try_advisory_lock(:k, :p)"), {"k": self.keys.partition, "p": partition}
            )
            if locked:
                self.owned.add(partition)
        now = frozenset(self.owned)
        if now != before:
            log.info(
                "relay.partitions_rebalanced",
                relays_alive=len(alive),
                share=share,
                gained=sorted(now - before),
                released=sorted(before - now),
            )
        return now


def relay_holdings(conn: Connection, keys: LockKeys) -> list[RelayHolding]:
    """Every live relay on this database with its partitions, from ``pg_locks``."""
    alive, held = _census(conn, keys)
    if not alive:
        return []
    sessions = conn.execute(
        text(
            "SELECT pid, coalesce(application_name, '') AS app,"
            " coalesce(client_addr::text, 'local') AS client FROM pg_stat_activity WHERE pid = ANY(:pids)"
        ),
        {"pids": sorted(alive)},
    )
    info = {row.pid: (row.app, row.client) for row in sessions}
    return [
        RelayHolding(pid, *info.get(pid, ("", "")), tuple(sorted(held.get(pid, set()))))
        for pid in sorted(alive)
    ]
