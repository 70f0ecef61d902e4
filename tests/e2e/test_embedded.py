"""The embedded mode: the same three processes on SQLite and the file broker, no servers at all."""

from __future__ import annotations

from pathlib import Path

from harness.processes import run_migrations, settings_env
from harness.waiting import wait_until
from shared.config import Settings
from tests.e2e.conftest import start_pipeline
from tests.support.checks import read_ledger
from tests.support.orders import expected_total, order_body, post_orders


def test_embedded_mode_turns_a_posted_order_into_an_invoice(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    run_migrations(settings_env(sqlite_settings))
    pipeline = start_pipeline(sqlite_settings, tmp_path / "logs")
    try:
        bodies = [order_body() for _ in range(5)]
        created = post_orders(pipeline.base_url, bodies, concurrency=2)

        def invoiced() -> bool:
            ledger = read_ledger(sqlite_settings.orders_database_url, sqlite_settings.invoices_database_url)
            return len(ledger.invoices) >= len(bodies)

        wait_until(invoiced, timeout=60, interval=0.5, message="an invoice for every embedded order")
    finally:
        pipeline.stop()
    ledger = read_ledger(sqlite_settings.orders_database_url, sqlite_settings.invoices_database_url)
    assert ledger.lost == ledger.doubled == ledger.wrong_totals == set()
    assert {o["id"]: o["amount_total"] for o in created} == {
        o["id"]: expected_total(b) for o, b in zip(created, bodies, strict=True)
    }
    assert sqlite_settings.orders_database_url.startswith("sqlite:///")
    assert list((sqlite_settings.var_dir / "broker").glob("*.msg")) == []  # every message consumed
