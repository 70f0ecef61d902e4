"""The services' relay programs: ``flask_outbox.RelayProgram`` with their settings and routes."""

from __future__ import annotations

from typing import Any

from flask_outbox import RelayProgram
from sqlalchemy import Table

from shared.config import Settings
from shared.contracts import ROUTES

__all__ = ["relay_program"]


def relay_program(
    service: str, table: Table, topic: str, database: str, **options: Any
) -> RelayProgram[Settings]:
    """``python -m <service>.relay``: the outbox ``table`` of the database the setting ``database`` names,
    which carries ``topic`` (its route's queue is the one the relay's flow control and re-drive look at)."""
    return RelayProgram(
        prog=f"python -m {service}.relay",
        table=table,
        settings=Settings,
        database_url=lambda settings: str(getattr(settings, database)),
        routes={topic: ROUTES[topic]},
        publisher_name=f"{service.split('_', maxsplit=1)[0]}_relay",
        **options,
    )
