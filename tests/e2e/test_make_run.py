"""``make run`` as a new user meets it: five processes on SQLite and the file broker, the loop closed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from harness.processes import ROOT, free_port, run_migrations
from harness.waiting import wait_until

PROCESS_NAMES = ("api", "order-relay", "invoice-worker", "invoice-relay", "order-consumer")


def _embedded_env(var_dir: Path, port: int) -> dict[str, str]:
    """The embedded default: no database or broker URL, only where var/ is and which ports to use."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_DATABASE_URL") and k not in {"BROKER_URL", "API_KEYS", "QUEUE_PREFIX"}
    }
    # Ports: the suite may run beside a real `make run`; 0 lets each relay pick a free health port.
    env.update(VAR_DIR=str(var_dir), API_PORT=str(port), METRICS_PORT="0")
    return env


def test_make_run_shows_a_placed_order_turn_invoiced(tmp_path: Path) -> None:
    port = free_port()
    env = _embedded_env(tmp_path / "var", port)
    run_migrations(env)
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen(
            [sys.executable, "tools/run_embedded.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: "Ctrl-C stops all five" in log_path.read_text() or run.poll() is not None,
            timeout=90,
            message="make run's help",
        )
        printed = log_path.read_text()
        assert "Ctrl-C stops all five" in printed, printed[-6000:]
        key = re.search(r"API key: (\S+)", printed)
        assert key is not None, printed
        assert f"http://127.0.0.1:{port}" in printed
        headers = {"Authorization": f"Bearer {key.group(1)}", "Idempotency-Key": "my-first-order"}
        body = {
            "customer_id": "cus_42",
            "currency": "EUR",
            "lines": [{"sku": "BOOK-1", "quantity": 2, "unit_amount": 1250}],
        }
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
            created = client.post("/orders", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["status"] == "placed"
            order_url = f"/orders/{created.json()['id']}"

            def invoiced() -> dict[str, object] | None:
                order = client.get(order_url).json()
                return order if order["status"] == "invoiced" else None

            order = wait_until(invoiced, timeout=60, interval=0.5, message="the order to turn invoiced")
            listed = client.get("/orders", params={"status": "invoiced"}).json()["data"]
        for relay in ("order_service.relay", "invoice_worker.relay"):  # the commands the help shows
            status = subprocess.run(
                [sys.executable, "-m", relay, "status"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip
            assert re.search(r"^relays_alive: 1 \(embedded, pid \d+\)$", status, re.MULTILINE), status
        assert str(order["invoice_number"]).startswith("INV-")
        assert order["invoiced_at"] is not None
        assert [o["id"] for o in listed] == [created.json()["id"]]
    finally:
        run.send_signal(signal.SIGINT)
        returncode = run.wait(timeout=60)
    assert returncode == 0, log_path.read_text()[-4000:]
    output = log_path.read_text()
    assert "exited with" not in output, output[-4000:]
    # Nothing a newcomer has to read past (Celery's warning shows only when run as root, as CI is).
    for noise in ("superuser privileges", "SecurityWarning", "No hostname was supplied"):
        assert noise not in output, output[-4000:]
