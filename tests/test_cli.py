"""The CLI contract: global options and their environment variables, exit codes, status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentjobs import __version__
from tests.conftest import run_agentjobs, write

J = "repo/jobs.d"


def _apply_examples(cli, jobs_dir: Path, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    write(
        jobs_dir / "nightly.yaml",
        """
        schedule: {cron: '30 2 * * *', timezone: Europe/Berlin}
        agent: {kind: claude, prompt: Fix the tests.}
        lock: app
        """,
    )
    write(jobs_dir / "docs.yaml", "schedule: {every: 8h}\ncommand: [make, docs]\nlock: app\n")
    write(jobs_dir / "manual.yaml", "command: [make, release]\nenabled: false\n")
    result = cli(
        "--jobs-dir", J, "--state-dir", str(state_dir), "apply", "--now", "2026-11-23T12:00:00Z"
    )
    assert result.code == 0, result.out + result.err


def test_status_is_a_list_timers_table(
    cli, jobs_dir: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    _apply_examples(cli, jobs_dir, state_dir)
    result = cli("--state-dir", str(state_dir), "status", "--now", "2026-11-23T13:00:00Z")
    assert result.code == 0
    lock = str(Path(J).resolve().parent)
    assert result.out.splitlines() == [
        "JOB      SCHEDULE                    NEXT                     LEFT    LAST  RESULT  LOCK",
        "docs     every 8h                    2026-11-23 12:00:00 UTC  due     -     -       app",
        f"manual   manual (disabled)           -                        -       -     -       {lock}",
        "nightly  30 2 * * * (Europe/Berlin)  2026-11-24 01:30:00 UTC  12h30m  -     -       app",
    ]


def test_status_json(cli, jobs_dir: Path, state_dir: Path) -> None:
    _apply_examples(cli, jobs_dir, state_dir)
    rows = json.loads(cli("--state-dir", str(state_dir), "-o", "json", "status").out)
    assert [r["job"] for r in rows] == ["docs", "manual", "nightly"]
    nightly = rows[2]
    assert nightly == {
        "job": "nightly",
        "schedule": "30 2 * * * (Europe/Berlin)",
        "enabled": True,
        "paused": False,
        "running": False,
        "queued": 0,
        "next": "2026-11-24T01:30:00+00:00",
        "last": None,
        "result": None,
        "lock": "app",
        "held": None,
        "skipped_by": [],
    }
    assert rows[1]["next"] is None and rows[1]["enabled"] is False


def test_status_before_any_apply_says_what_to_do(cli, tmp_path: Path) -> None:
    result = cli("--state-dir", str(tmp_path / "none"), "status")
    assert result.code == 0
    assert result.out == f"no jobs applied in {tmp_path / 'none'}; run `agentjobs apply`\n"
    assert not (tmp_path / "none").exists()


def test_environment_variables_stand_in_for_global_options(jobs_dir: Path, tmp_path: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\n")
    env = {"AGENTJOBS_JOBS_DIR": str(jobs_dir), "AGENTJOBS_STATE_DIR": str(tmp_path / "s")}
    assert run_agentjobs("apply", env=env).returncode == 0
    status = run_agentjobs("--output", "json", "status", env=env)
    assert [r["job"] for r in json.loads(status.stdout)] == ["a"]


def test_version_and_usage_errors(cli) -> None:
    assert cli("--version").out == f"agentjobs, version {__version__}\n"
    bad = cli("frobnicate")
    assert bad.code == 2
    assert "No such command 'frobnicate'" in bad.err
    assert cli("--output", "yaml", "status").code == 2


def test_an_unexpected_exception_is_a_bug_report_not_a_traceback(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agentjobs.store.files as files

    def boom(self: object) -> dict:  # type: ignore[type-arg]
        raise RuntimeError("kaboom")

    monkeypatch.setattr(files.FileStore, "applied", boom)
    state = tmp_path / "s"
    state.mkdir()
    result = cli("--state-dir", str(state), "status")
    assert result.code == 70
    assert "Traceback" not in result.out + result.err
    assert result.err.startswith(
        "agentjobs: internal error (a bug, please report it): RuntimeError('kaboom'); details in "
    )
    report = Path(result.err.rsplit("details in ", 1)[1].strip())
    assert report.parent == state
    assert "Traceback" in report.read_text() and "kaboom" in report.read_text()


def test_ctrl_c_exits_130(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agentjobs.store.files as files

    def interrupted(self: object) -> dict:  # type: ignore[type-arg]
        raise KeyboardInterrupt

    monkeypatch.setattr(files.FileStore, "applied", interrupted)
    result = cli("--state-dir", str(tmp_path), "status")
    assert (result.code, result.err.strip()) == (130, "agentjobs: interrupted")


def test_real_process_never_prints_a_traceback_on_bad_input(jobs_dir: Path, tmp_path: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a\n  - : :\n\t{{{\n")
    for verb in ("validate", "plan", "apply"):
        result = run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", str(tmp_path / "s"), verb
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stdout.startswith(f"{jobs_dir}/a.yaml:")
