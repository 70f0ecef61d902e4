"""The relay: ``python -m examples.signups.relay [run [--once] | status | retry-parked]``."""

from __future__ import annotations

import sys

from flask_outbox import RelayProgram

from examples.signups.contract import ROUTES, SignupSettings
from examples.signups.models import outbox

PROGRAM: RelayProgram[SignupSettings] = RelayProgram(
    prog="python -m examples.signups.relay",
    table=outbox.table,
    settings=SignupSettings,
    database_url=lambda settings: settings.database_url,
    routes=ROUTES,
    publisher_name="signups_relay",
)

if __name__ == "__main__":
    sys.exit(PROGRAM.main())
