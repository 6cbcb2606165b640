"""plan and apply: create / update with a field diff / delete / unchanged, and schedule state."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from tests.conftest import write

J = "repo/jobs.d"
NOW = "2026-11-23T12:00:00Z"


def _state(state_dir: Path, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((state_dir / name).read_text())


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_plan_apply_plan_round_trip(cli, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [echo, a]\nschedule: {cron: '0 2 * * *'}\n")
    write(jobs_dir / "b.yaml", "command: [echo, b]\n")
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    first = cli(*base, "plan")
    assert first.code == 3
    assert first.out.splitlines() == [
        "+ create: a  (repo/jobs.d/a.yaml)",
        "+ create: b  (repo/jobs.d/b.yaml)",
        "Plan: 2 to create, 0 to update, 0 to delete, 0 unchanged.",
    ]
    assert not state_dir.exists(), "plan must not write anything"
    applied = cli(*base, "apply", "--now", NOW)
    assert applied.code == 0
    assert (
        applied.out.splitlines()[-1]
        == "Applied: 2 to create, 0 to update, 0 to delete, 0 unchanged."
    )
    again = cli(*base, "plan")
    assert (again.code, again.out) == (
        0,
        "Plan: 0 to create, 0 to update, 0 to delete, 2 unchanged.\n",
    )
    assert (
        cli(*base, "apply").out == "Applied: 0 to create, 0 to update, 0 to delete, 2 unchanged.\n"
    )


def test_update_shows_a_field_level_diff(cli, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [echo, a]\ntimeout: 1h\npriority: low\n")
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    write(jobs_dir / "a.yaml", "command: [echo, b]\ntimeout: 2h\npriority: low\n")
    result = cli(*base, "plan")
    assert result.code == 3
    assert result.out.splitlines() == [
        "~ update: a  (repo/jobs.d/a.yaml)",
        '    command: ["echo", "a"] -> ["echo", "b"]',
        "    timeout: 3600.0 -> 7200.0",
        "Plan: 0 to create, 1 to update, 0 to delete, 0 unchanged.",
    ]
    as_json = json.loads(cli(*base, "--output", "json", "plan").out)
    assert as_json == [
        {
            "action": "update",
            "name": "a",
            "source": "repo/jobs.d/a.yaml",
            "changes": [
                {"path": "command", "old": ["echo", "a"], "new": ["echo", "b"]},
                {"path": "timeout", "old": 3600.0, "new": 7200.0},
            ],
        }
    ]


def test_deleted_files_are_removed_only_with_prune_and_history_is_kept(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\n")
    write(jobs_dir / "b.yaml", "command: [b]\n")
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    records = write(state_dir / "records" / "2026-11-23.jsonl", '{"job": "b"}\n')
    (jobs_dir / "b.yaml").unlink()
    plan = cli(*base, "plan")
    assert plan.code == 0  # apply without --prune would change nothing
    assert plan.out.splitlines() == [
        "! delete (needs --prune): b  (repo/jobs.d/b.yaml)",
        "Plan: 0 to create, 0 to update, 0 to delete, 1 unchanged, 1 whose file is gone (kept; "
        "use --prune to delete).",
    ]
    assert cli(*base, "apply").code == 0
    assert "b" in _state(state_dir, "applied.json")["jobs"]
    assert cli(*base, "plan", "--prune").code == 3
    pruned = cli(*base, "apply", "--prune")
    assert pruned.out.splitlines() == [
        "- delete: b  (repo/jobs.d/b.yaml)",
        "Applied: 0 to create, 0 to update, 1 to delete, 1 unchanged.",
    ]
    assert set(_state(state_dir, "applied.json")["jobs"]) == {"a"}
    assert records.read_text() == '{"job": "b"}\n'


def test_prompt_change_keeps_schedule_state_schedule_change_recomputes(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    write(
        jobs_dir / "a.yaml", "agent: {kind: claude, prompt: one}\nschedule: {cron: '0 2 * * *'}\n"
    )
    assert cli(*base, "apply", "--now", NOW).code == 0
    before = _state(state_dir, "runtime.json")["jobs"]["a"]
    assert before["next_due"] == "2026-11-24T02:00:00+00:00"
    write(
        jobs_dir / "a.yaml", "agent: {kind: claude, prompt: two}\nschedule: {cron: '0 2 * * *'}\n"
    )
    assert cli(*base, "apply", "--now", "2026-11-23T20:00:00Z").code == 0
    assert _state(state_dir, "runtime.json")["jobs"]["a"] == before
    write(
        jobs_dir / "a.yaml", "agent: {kind: claude, prompt: two}\nschedule: {cron: '0 3 * * *'}\n"
    )
    assert cli(*base, "apply", "--now", "2026-11-23T20:00:00Z").code == 0
    after = _state(state_dir, "runtime.json")["jobs"]["a"]
    assert after["next_due"] == "2026-11-24T03:00:00+00:00"
    assert after["schedule_hash"] != before["schedule_hash"]


def test_every_job_keeps_counting_from_its_last_run_when_the_interval_changes(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    import dataclasses

    from agentjobs.store.files import FileStore

    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    write(jobs_dir / "a.yaml", "command: [a]\nschedule: {every: 8h}\n")
    assert cli(*base, "apply", "--now", NOW).code == 0
    store = FileStore(state_dir)
    state = store.runtime().jobs["a"]
    assert state.next_due == "2026-11-23T12:00:00+00:00"  # never ran: due now
    with store.transaction(5) as runtime:
        runtime.jobs["a"] = dataclasses.replace(state, last_finished="2026-11-23T13:00:00+00:00")
    write(jobs_dir / "a.yaml", "command: [a]\nschedule: {every: 2h}\n")
    assert cli(*base, "apply", "--now", "2026-11-23T14:00:00Z").code == 0
    assert store.runtime().jobs["a"].next_due == "2026-11-23T15:00:00+00:00"


def test_invalid_files_apply_nothing_and_leave_state_byte_for_byte(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    write(jobs_dir / "a.yaml", "command: [a]\n")
    assert cli(*base, "apply").code == 0
    before = _snapshot(state_dir)
    write(jobs_dir / "a.yaml", "command: [b]\n")
    write(jobs_dir / "b.yaml", "command: [b]\ntimeout: soon\n")
    result = cli(*base, "apply")
    assert result.code == 2
    assert result.out.splitlines() == [
        "repo/jobs.d/b.yaml:2:10: timeout: `soon` is not a duration; write e.g. 90s, 10m, 2h, 1d, "
        "1h30m or ISO-8601 PT2H",
    ]
    assert result.err == "agentjobs: 1 error in 1 file; nothing was changed\n"
    assert _snapshot(state_dir) == before
    assert cli(*base, "plan").code == 2


def test_applied_state_records_source_hash_time_and_git_commit(
    cli, jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    import subprocess

    repo = tmp_path / "repo"
    write(jobs_dir / "a.yaml", "command: [a]\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "jobs"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert cli("--jobs-dir", J, "--state-dir", str(state_dir), "apply", "--now", NOW).code == 0
    job = _state(state_dir, "applied.json")["jobs"]["a"]
    assert job["git_commit"] == sha
    assert job["source"] == "repo/jobs.d/a.yaml"
    assert job["applied_at"] == "2026-11-23T12:00:00+00:00"
    assert len(job["spec_hash"]) == 16
    assert job["spec"]["workdir"] == os.path.realpath(repo)
    assert job["spec"]["lock"] == os.path.realpath(repo)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert _state(state_dir, "format.json")["format"] == 1


def test_dry_run_changes_nothing(cli, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\n")
    result = cli("--jobs-dir", J, "--state-dir", str(state_dir), "apply", "--dry-run")
    assert result.code == 0
    assert (
        result.out.splitlines()[-1]
        == "Dry run: 1 to create, 0 to update, 0 to delete, 0 unchanged."
    )
    assert not (state_dir / "applied.json").exists()


def test_global_config_changes_show_in_the_plan(cli, jobs_dir: Path, state_dir: Path) -> None:
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    write(jobs_dir / "a.yaml", "command: [a]\n")
    assert cli(*base, "apply").code == 0
    write(jobs_dir / "agentjobs.yaml", "max_concurrent: 4\ntimeout: 2h\n")
    result = cli(*base, "plan")
    assert result.code == 3
    assert result.out.splitlines() == [
        "~ update: (global config)",
        '    defaults.timeout: null -> "2h"',
        "    max_concurrent: 2 -> 4",
        "~ update: a  (repo/jobs.d/a.yaml)",
        "    timeout: 3600.0 -> 7200.0",
        "Plan: 0 to create, 1 to update, 0 to delete, 0 unchanged.",
    ]
