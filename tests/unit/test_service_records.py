"""``Service.records``: a test reads a process's JSON log while the process is still writing it."""

from __future__ import annotations

from pathlib import Path

from harness.processes import Service


def test_only_finished_json_lines_are_records_and_the_unfinished_last_one_waits_for_its_newline(
    tmp_path: Path,
) -> None:
    service = Service("relay", ["true"], {}, tmp_path / "relay.log")
    service.log_path.write_text(
        '{"event": "outbox.batch_relayed", "published": 2}\n'
        '{"event": "outbox.batch_rel\n'  # a killed process's last words; its restart appends after them
        "plain text from a library\n"
        '{"event": "relay.started"}\n'
        '{"event": "outbox.batch_relayed", "publ'  # being written right now
    )

    assert service.records("outbox.batch_relayed") == [{"event": "outbox.batch_relayed", "published": 2}]
    assert [r["event"] for r in service.records()] == ["outbox.batch_relayed", "relay.started"]

    with service.log_path.open("a") as log:
        log.write('ished": 3}\n')
    assert [r["published"] for r in service.records("outbox.batch_relayed")] == [2, 3]
