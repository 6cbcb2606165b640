"""state export / import: a deployment moves without losing history or dead letters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"
T0 = "2026-11-23T12:00:00Z"


def test_export_then_import_keeps_everything(
    cli, jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    write(jobs_dir / "agentjobs.yaml", "max_concurrent: 3\n")
    write(
        jobs_dir / "ok.yaml",
        json.dumps({"command": [sys.executable, FAKE, "print", "ok"], "schedule": {"every": "1h"}}),
    )
    write(
        jobs_dir / "bad.yaml",
        json.dumps(
            {
                "command": [sys.executable, FAKE, "exit", "1"],
                "schedule": {"cron": "0 * * * *"},
                "retry": {"attempts": 1},
            }
        ),
    )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply", "--now", T0).code == 0
    assert cli(*base, "tick", "--now", "2026-11-23T13:00:05Z").code == 1
    assert cli(*base, "run", "ok").code == 0
    export = tmp_path / "state.jsonl"
    assert cli(*base, "state", "export", "--file", str(export)).code == 0
    kinds = [json.loads(line)["kind"] for line in export.read_text().splitlines()]
    assert kinds[0] == "format" and kinds.count("dead_letter") == 1

    moved = tmp_path / "moved"
    imported = cli("--state-dir", str(moved), "-o", "json", "state", "import", str(export))
    assert imported.code == 0, imported.err
    assert json.loads(imported.out)["applied"] == 2
    for verb in (("status",), ("history",), ("dlq", "list")):
        before = json.loads(cli("--state-dir", str(state_dir), "-o", "json", *verb).out)
        after = json.loads(cli("--state-dir", str(moved), "-o", "json", *verb).out)
        assert after == before, verb
    # the moved deployment plans nothing new and keeps ticking
    assert cli("--jobs-dir", J, "--state-dir", str(moved), "plan").code == 0
    assert cli("--state-dir", str(moved), "tick", "--now", "2026-11-23T15:00:05Z").code in (0, 1)
    again = cli("--state-dir", str(moved), "state", "import", str(export))
    assert again.code == 2
    assert "already has applied jobs; import into an empty state directory" in again.err
