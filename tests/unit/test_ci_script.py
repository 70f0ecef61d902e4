""".ci/run on a machine whose PostgreSQL is still starting: it waits instead of failing.

CI once ended after 0 s: ``pg_isready`` did not answer yet, ``pg_ctlcluster … start`` said "Cluster is
already running" (exit 2), and ``set -e`` ended the script. Here the script runs from a copy of the
repository with stand-ins first on ``PATH``: a ``pg_isready`` that answers from its third call, that
``pg_ctlcluster``, servers that answer, and a ``make`` that only says what it was asked.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

CI_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "run"

STAND_INS = {
    "pg_isready": 'n=$(cat "$CALLS" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$CALLS"; [ $n -ge 3 ]',
    "pg_ctlcluster": 'echo "Cluster is already running." >&2; exit 2',
    "redis-cli": "echo PONG",
    "make": 'echo "make $*"',
    **{tool: "exit 0" for tool in ("rabbitmqctl", "redis-server", "rabbitmq-server", "chromium")},
    **{tool: "exit 0" for tool in ("dockerd", "docker-compose", "debootstrap")},
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository holding only .ci/run, and a bin/ of stand-ins."""
    (tmp_path / "repo" / ".ci").mkdir(parents=True)
    shutil.copy(CI_SCRIPT, tmp_path / "repo" / ".ci" / "run")
    (tmp_path / "bin").mkdir()
    for name, body in STAND_INS.items():
        tool = tmp_path / "bin" / name
        tool.write_text(f"#!/bin/bash\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "repo"


def test_a_postgres_still_starting_is_waited_for_and_the_suite_runs(repo: Path) -> None:
    env = {
        "PATH": f"{repo.parent / 'bin'}:/usr/bin:/bin",
        "CALLS": str(repo.parent / "pg_isready.calls"),
        "HOME": str(repo.parent),
    }
    done = subprocess.run(
        ["bash", ".ci/run"], cwd=repo, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ci] pg_ctlcluster exited 2; waiting for PostgreSQL to answer" in done.stdout
    assert "[ci] PostgreSQL is up" in done.stdout
    assert done.stdout.rstrip().endswith("make test")
