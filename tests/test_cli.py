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
        "JOB      SCHEDULE                    NEXT                     LEFT    LAST  RESULT  NOW  LOCK",
        "docs     every 8h                    2026-11-23 12:00:00 UTC  due     -     -       -    app",
        f"manual   manual (disabled)           -                        -       -     -       -    {lock}",
        "nightly  30 2 * * * (Europe/Berlin)  2026-11-24 01:30:00 UTC  12h30m  -     -       -    app",
    ]
    # a terminal 80 columns wide: the widest columns are cut to fit
    monkeypatch.setenv("COLUMNS", "80")
    narrow = cli("--state-dir", str(state_dir), "status", "--now", "2026-11-23T13:00:00Z")
    assert all(len(line) <= 80 for line in narrow.out.splitlines())
    assert "…" in narrow.out


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
        "waiting": None,
        "limit_hold": None,
        "spend_today": None,
        "skipped_by": [],
        "attempts_running": [],
        "dead_letters": 0,
        "reviews": 0,
        "needs": [],
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


def test_a_bad_lock_timeout_is_one_line_and_exit_2(jobs_dir: Path, tmp_path: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\n")
    env = {"AGENTJOBS_JOBS_DIR": str(jobs_dir), "AGENTJOBS_STATE_DIR": str(tmp_path / "s")}
    assert run_agentjobs("apply", env={**env, "AGENTJOBS_LOCK_TIMEOUT": ""}).returncode == 0
    for value, verb in [("abc", "apply"), ("soon", "tick"), ("-1", "repair"), ("nan", "pause")]:
        extra = ["a"] if verb == "pause" else []
        result = run_agentjobs(verb, *extra, env={**env, "AGENTJOBS_LOCK_TIMEOUT": value})
        assert (result.returncode, result.stdout) == (2, ""), (verb, result.stderr)
        assert result.stderr == (
            f"agentjobs: error: AGENTJOBS_LOCK_TIMEOUT={value!r}: the lock timeout is a number "
            "of seconds, 0 or more (30, say)\n"
        )
    flag = run_agentjobs("apply", "--lock-timeout", "-5", env=env)
    assert (flag.returncode, flag.stderr) == (
        2,
        "agentjobs: error: --lock-timeout -5: the lock timeout is a number of seconds, 0 or more "
        "(30, say)\n",
    )
    # the flag wins over the variable, which stands in for it
    both = {**env, "AGENTJOBS_LOCK_TIMEOUT": "x"}
    assert run_agentjobs("apply", "--lock-timeout", "5", env=both).returncode == 0
    good = {**env, "AGENTJOBS_LOCK_TIMEOUT": "0.5"}
    assert run_agentjobs("repair", "--force", env=good).returncode == 0


def test_tick_and_run_give_the_signal_handlers_back(cli, jobs_dir: Path, tmp_path: Path) -> None:
    import signal

    write(jobs_dir / "a.yaml", "command: ['true']\nschedule: {every: 1h}\n")
    state = str(tmp_path / "s")
    assert cli("--jobs-dir", J, "--state-dir", state, "apply").code == 0
    numbers = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = [signal.getsignal(n) for n in numbers]
    assert cli("--state-dir", state, "tick").code == 0
    assert cli("--state-dir", state, "run", "a").code == 0
    assert [signal.getsignal(n) for n in numbers] == before


def test_tick_now_in_the_future_says_what_carries_that_time(cli, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    write(tmp_path / "repo/jobs.d/a.yaml", "command: ['true']\nschedule: {every: 1h}\n")
    state = str(tmp_path / "s")
    assert cli("--jobs-dir", J, "--state-dir", state, "apply").code == 0
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    assert cli("--state-dir", state, "tick", "--now", "").err == ""  # empty: the real clock
    assert cli("--state-dir", state, "tick", "--now", soon).err == ""  # within a minute: quiet
    ahead = cli("--state-dir", state, "tick", "--now", "2099-01-01T00:00:00Z")
    assert ahead.code == 0
    assert ahead.err == (
        "agentjobs: warning: --now 2099-01-01T00:00:00+00:00 is ahead of this machine's clock; "
        "the records this tick writes and the next runs it schedules carry that time\n"
    )
    assert ahead.out.startswith("a: attempt 1 succeeded in ")  # a new run: still usable


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


# -- logs in constant memory, and the log size cap (issue 10, item 13) --------------------------


def _peak_rss_mb(args: list[str]) -> tuple[int, float]:
    """Run `python -m agentjobs ARGS` (stdout to /dev/null): exit code and peak RSS in MB of
    that process alone (wait4's rusage, not the max over every child this test run had)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentjobs", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    proc.stderr.close()
    return proc.returncode, usage.ru_maxrss / 1024  # KiB on Linux


def test_logs_of_a_200mb_log_stream_in_constant_memory(cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pattern = b"".join(f"line {n:06d} ".encode() + b"y" * 100 + b"\n" for n in range(9000))
    path = logs / "01TESTRUN000000000000000000.1.log"
    with open(path, "wb") as handle:
        for _ in range(200 * 1024 * 1024 // len(pattern)):
            handle.write(pattern)
    small = logs / "01TESTRUNSMALL0000000000000.1.log"
    small.write_bytes(pattern[:1000])
    try:
        base = ["--state-dir", str(state), "logs"]
        code, baseline = _peak_rss_mb([*base, "01TESTRUNSMALL0000000000000"])
        assert code == 0
        code, big = _peak_rss_mb([*base, "01TESTRUN000000000000000000"])
        assert code == 0
        assert big < baseline + 15, (baseline, big)  # not 400 MB: streamed in chunks
        code, tail = _peak_rss_mb([*base, "01TESTRUN000000000000000000", "--tail", "5"])
        assert code == 0 and tail < baseline + 15, (baseline, tail)
    finally:
        path.unlink()


def test_logs_tail_prints_the_last_lines(cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "logs" / "01TAIL.1.log").write_text("".join(f"{n}\n" for n in range(1000)))
    result = cli("--state-dir", str(state), "logs", "01TAIL", "--tail", "3")
    assert (result.code, result.out) == (0, "997\n998\n999\n")


def test_a_job_printing_more_than_its_max_log_size_keeps_head_and_tail(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    import sys

    spew = (
        "import sys\nprint('HEAD-MARK')\n"
        "for n in range(300): sys.stdout.write('z' * 1023 + '\\n')\nprint('TAIL-MARK')\n"
    )
    write(
        jobs_dir / "spew.yaml",
        json.dumps({"command": [sys.executable, "-c", spew], "max_log_size": "64k"}),
    )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "run", "spew").code == 0
    (log,) = (state_dir / "logs").glob("*.log")
    data = log.read_bytes()
    assert 65536 <= len(data) <= 65536 + 200
    assert data.startswith(b"HEAD-MARK\n") and data.endswith(b"TAIL-MARK\n")
    assert b"[agentjobs] log capped at 64KiB (max_log_size): " in data


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("lots", "max_log_size"),
        ("100", "at least 4096 bytes"),
        (12, "must be at least 4096, got 12"),
    ],
)
def test_max_log_size_is_validated(cli, jobs_dir: Path, value: object, problem: str) -> None:
    write(jobs_dir / "a.yaml", json.dumps({"command": ["true"], "max_log_size": value}))
    result = cli("validate", str(jobs_dir))
    assert result.code == 2 and problem in result.out + result.err


def test_max_log_size_parses_units_and_defaults_from_the_global_config(tmp_path: Path) -> None:
    from agentjobs.sizes import parse_size
    from agentjobs.spec import build_config, merge_defaults

    assert parse_size("64MiB") == parse_size("64M") == parse_size("64m") == 64 * 1024**2
    assert parse_size("500k") == 500 * 1024 and parse_size("1.5MB") == 1_500_000
    assert parse_size("4096") == parse_size(4096) == 4096
    config = build_config({"max_log_size": "1GiB"})
    assert merge_defaults({"command": ["true"]}, config)["max_log_size"] == "1GiB"
    assert merge_defaults({"max_log_size": "1k"}, config)["max_log_size"] == "1k"
