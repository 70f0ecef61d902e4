"""``make run``: the whole loop as five processes on SQLite and the file broker under var/.

API -> order relay -> invoice worker -> invoice relay -> order consumer (the order turns ``invoiced``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = os.environ.get("API_HOST", "127.0.0.1")
PORT = int(os.environ.get("API_PORT", "8000"))
BIN = Path(sys.executable).parent

CELERY = str(BIN / "celery")
GUNICORN_CONFIG = "python:order_service.gunicorn_conf"  # the API's /metrics on its METRICS_PORT
PROCESSES = {
    "api": [
        str(BIN / "gunicorn"),
        "-c",
        GUNICORN_CONFIG,
        "order_service.wsgi:app",
        "--bind",
        f"{HOST}:{PORT}",
        "--workers",
        "2",
    ],
    "order-relay": [sys.executable, "-m", "order_service.relay"],
    "invoice-worker": [
        CELERY,
        "-A",
        "invoice_worker",
        "worker",
        "-Q",
        "invoices",
        "-n",
        "invoices@%h",
        "-c",
        "2",
    ],
    "invoice-relay": [sys.executable, "-m", "invoice_worker.relay"],
    "order-consumer": [CELERY, "-A", "order_service.worker", "worker", "-Q", "orders", "-n", "orders@%h"],
}
_METRICS_BASE = int(os.environ.get("METRICS_PORT", "9101"))
ENVIRONMENT = {
    name: {"METRICS_PORT": str(_METRICS_BASE + offset if _METRICS_BASE else 0)}
    for offset, name in enumerate(("order-relay", "invoice-worker", "invoice-relay", "order-consumer", "api"))
}
"""All five share one host here, so each serves /metrics and its probes on its own port: METRICS_PORT
(9101) and the next four (0: a free port each). In compose each has its own container and port 9101."""

# Run as root (a container, a fresh VM), a Celery worker warns at start (celery.platforms.check_privileges)
# that it should drop privileges with --uid: good advice for a deployed worker, noise for a newcomer's local
# loop, and C_FORCE_ROOT does not silence it (it only allows pickle as root, which we never accept). The
# warning is a Python SecurityWarning, so a warnings filter for these two local processes hides it.
_NOT_ROOT_WARNING = "ignore:You're running the worker with superuser privileges"
_QUIET_ROOT = {
    "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _NOT_ROOT_WARNING]))
}
for _worker in ("invoice-worker", "order-consumer"):
    ENVIRONMENT[_worker] = {**ENVIRONMENT[_worker], **_QUIET_ROOT}

HELP = """
  The pipeline is running (embedded mode: SQLite + file broker under var/).

  API:    http://{host}:{port}   (docs: http://{host}:{port}/docs/, contract: /openapi.json)
  API key: {key}
  Place an order:
    curl -s -X POST http://{host}:{port}/orders -H 'Authorization: Bearer {key}' \\
      -H 'Content-Type: application/json' -H 'Idempotency-Key: my-first-order' \\
      -d '{{"customer_id": "cus_42", "currency": "EUR",
           "lines": [{{"sku": "BOOK-1", "quantity": 2, "unit_amount": 1250}}]}}'
  See the order:        curl -s -H 'Authorization: Bearer {key}' http://{host}:{port}/orders/<id>
                        (status "placed", then "invoiced" with its invoice_number within seconds)
  Invoiced orders:      curl -s -H 'Authorization: Bearer {key}' 'http://{host}:{port}/orders?status=invoiced'
  See its invoice:      .venv/bin/python -m invoice_worker invoices
  Outbox status:        .venv/bin/python -m order_service.relay status
                        .venv/bin/python -m invoice_worker.relay status
  Metrics:              :{metrics}/metrics (order relay), then invoice worker, invoice relay, order
                        consumer and API on the next four ports; /readyz on each but the API's

  Ctrl-C stops all five.
"""


def _api_key() -> str:
    """The key to show: the dev key the API generated under var/, unless API_KEYS sets the keys."""
    if os.environ.get("API_KEYS"):
        return "<one of your API_KEYS>"
    dev_key = Path(os.environ.get("VAR_DIR", "var")) / "dev-api-key"
    return dev_key.read_text().strip() if dev_key.exists() else "<see the api.dev_key log line>"


def _wait_until_ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
                return bool(response.status == 200)
        except OSError:
            time.sleep(0.2)
    return False


def main() -> int:
    children = {
        name: subprocess.Popen(command, env={**os.environ, **ENVIRONMENT.get(name, {})})
        for name, command in PROCESSES.items()
    }
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if _wait_until_ready(f"http://{HOST}:{PORT}/readyz", time.monotonic() + 30):
        print(HELP.format(host=HOST, port=PORT, key=_api_key(), metrics=_METRICS_BASE), flush=True)
    else:
        print("The API did not become ready within 30 s; see the logs above.", file=sys.stderr)
        stopping = True
    while not stopping and all(child.poll() is None for child in children.values()):
        time.sleep(0.2)
    for name, child in children.items():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        elif not stopping:
            print(f"{name} exited with {child.returncode}; stopping the others.", file=sys.stderr)
    for child in children.values():
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
