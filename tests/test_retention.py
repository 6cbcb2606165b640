"""Retention: old logs go (not those of open dead letters), old record days are archived."""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from pathlib import Path

from tests.conftest import write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"


def test_gc_applies_retention_and_never_touches_open_dead_letters(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "agentjobs.yaml", "retention: {logs: 7d, records: 30d}\n")
    write(jobs_dir / "ok.yaml", json.dumps({"command": [sys.executable, FAKE, "print", "ok"]}))
    write(
        jobs_dir / "bad.yaml",
        json.dumps({"command": [sys.executable, FAKE, "exit", "1"], "retry": {"attempts": 1}}),
    )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "run", "ok").code == 0
    assert cli(*base, "run", "bad").code == 1
    logs = sorted((state_dir / "logs").glob("*.log"))
    assert len(logs) == 2
    old = time.time() - 10 * 86400
    for log in logs:
        os.utime(log, (old, old))
    ancient = state_dir / "records" / "2026-01-01.jsonl"
    ancient.write_text('{"event": "attempt_finished", "job": "x"}\n')
    result = cli(*base, "gc")
    assert result.code == 0
    assert "1 old log(s) removed, 1 record day(s) archived" in result.out
    dead = json.loads(cli(*base, "-o", "json", "dlq", "list").out)[0]
    kept = [p.name for p in (state_dir / "logs").glob("*.log")]
    assert kept == [f"{dead['run_id']}.1.log"]  # the open dead letter's log stays
    assert not ancient.exists()
    archived = state_dir / "records" / "archive" / "2026-01-01.jsonl.gz"
    assert gzip.decompress(archived.read_bytes()) == b'{"event": "attempt_finished", "job": "x"}\n'
    assert len(json.loads(cli(*base, "-o", "json", "history").out)) == 2  # today's stay
