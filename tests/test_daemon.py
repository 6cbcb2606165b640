"""The daemon: sleeps until the next slot, wakes on apply, one per state dir, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import run_agentjobs, wait_for, write


def test_daemon_wakes_on_apply_and_starts_a_job_at_its_slot_and_outlives_sighup(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "started"
    write(jobs_dir / "idle.yaml", "command: ['true']\nschedule: {cron: '0 0 1 1 *'}\n")
    assert (
        run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply"
        ).returncode
        == 0
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), "daemon"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (state_dir / "locks" / "daemon.lock").exists())
        second = run_agentjobs("--state-dir", str(state_dir), "daemon")
        assert second.returncode == 2
        assert "a daemon already runs for" in second.stderr
        slot = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
        write(
            jobs_dir / "soon.yaml",
            json.dumps(
                {
                    "command": ["sh", "-c", f"date +%s.%N > {probe}"],
                    "schedule": {"at": slot.isoformat()},
                }
            ),
        )
        assert (
            run_agentjobs(
                "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply"
            ).returncode
            == 0
        )
        wait_for(lambda: probe.exists() and probe.read_text().strip() != "", timeout=20)
        late = float(probe.read_text()) - slot.timestamp()
        assert 0 <= late < 0.5, f"started {late:.3f}s after its slot"
        daemon.send_signal(signal.SIGHUP)  # a closed terminal does not end the daemon
        time.sleep(0.5)
        assert daemon.poll() is None
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=15)
        assert daemon.returncode == 0, err
        assert "daemon: stopped" in err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()


def test_daemon_with_watch_applies_saved_files_by_itself(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "ran"
    write(jobs_dir / "idle.yaml", "command: ['true']\nschedule: {cron: '0 0 1 1 *'}\n")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentjobs",
            "--jobs-dir",
            str(jobs_dir),
            "--state-dir",
            str(state_dir),
            "daemon",
            "--watch",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (state_dir / "applied.json").exists())
        time.sleep(0.5)
        slot = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
        write(
            jobs_dir / "soon.yaml",
            json.dumps(
                {
                    "command": ["sh", "-c", f"date +%s.%N > {probe}"],
                    "schedule": {"at": slot.isoformat()},
                }
            ),
        )
        wait_for(lambda: probe.exists() and probe.read_text().strip() != "", timeout=20)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=15)
        assert daemon.returncode == 0, err
        assert " INFO    watch: create: soon\n" in err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()


# -- the daemon and cron ticks decide alike (issue 10 item 12) ---------------------------------
#
# The clock runs 15 times faster (`--now` with AGENTJOBS_CLOCK_RATE): a minute of schedule
# passes in 4 real seconds, and the job's 10 s (150 s of the clock) outlast two of its minutely
# slots. Each process starts its clock at the time it is given, so minute ticks started 4 real
# seconds apart each see "their" minute.

SPEED = 15
FAKE_START = datetime(2026, 11, 23, 11, 59, 50, tzinfo=UTC)


def _fast_clock(start: datetime) -> tuple[list[str], dict[str, str]]:
    """The options and environment of a process whose clock starts at `start`, runs fast."""
    return ["--now", start.isoformat()], {**os.environ, "AGENTJOBS_CLOCK_RATE": str(SPEED)}


def _slow_minutely_job(jobs_dir: Path, state_dir: Path, overlap: str) -> None:
    write(
        jobs_dir / "slow.yaml",
        json.dumps(
            {
                "command": ["sleep", str(150 / SPEED)],
                "schedule": {"cron": "* * * * *"},
                "overlap": overlap,
            }
        ),
    )
    applied = run_agentjobs(
        "--jobs-dir",
        str(jobs_dir),
        "--state-dir",
        str(state_dir),
        "apply",
        "--now",
        FAKE_START.isoformat(),
    )
    assert applied.returncode == 0, applied.stderr


def _decisions(state_dir: Path) -> list[tuple[str, str, str]]:
    """What happened to each slot: (slot, event, reason or outcome), in slot order."""
    out = []
    for path in sorted((state_dir / "records").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["event"] in ("attempt_started", "attempt_finished", "slot_skipped"):
                detail = record.get("reason") if record["event"] == "slot_skipped" else ""
                if record["event"] == "attempt_finished":
                    detail = record["outcome"]
                out.append((record["slot"][11:16], record["event"], detail or ""))
    order = {"slot_skipped": 0, "attempt_started": 1, "attempt_finished": 2}
    return sorted(out, key=lambda d: (d[0], order[d[1]]))


def _first_run_ended(state_dir: Path) -> bool:
    return any(d[1] == "attempt_finished" for d in _decisions(state_dir))


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return err


def _under_daemon(jobs_dir: Path, state_dir: Path, overlap: str) -> list[tuple[str, str, str]]:
    _slow_minutely_job(jobs_dir, state_dir, overlap)
    now, env = _fast_clock(FAKE_START)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), "daemon", *now],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # the 12:00 run ends at 12:02:30; stop a little later, before 12:03
        wait_for(lambda: _first_run_ended(state_dir), timeout=60)
        time.sleep(10 / SPEED)
        err = _stop(daemon)
        assert daemon.returncode == 0, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    return _decisions(state_dir)


def _under_minute_ticks(
    jobs_dir: Path, state_dir: Path, overlap: str
) -> list[tuple[str, str, str]]:
    _slow_minutely_job(jobs_dir, state_dir, overlap)
    ticks: list[subprocess.Popen[str]] = []
    begin = time.monotonic()
    try:
        for minute in range(3):  # cron: 12:00, 12:01, 12:02
            time.sleep(max(0.0, begin + minute * 60 / SPEED - time.monotonic()))
            now, env = _fast_clock(datetime(2026, 11, 23, 12, minute, tzinfo=UTC))
            ticks.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "agentjobs",
                        "--state-dir",
                        str(state_dir),
                        "tick",
                        *now,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        wait_for(lambda: _first_run_ended(state_dir), timeout=60)
        time.sleep(10 / SPEED)
        for tick in ticks:
            if tick.poll() is None:
                tick.send_signal(signal.SIGTERM)  # the one running the queued slot
            tick.communicate(timeout=30)
    finally:
        for tick in ticks:
            if tick.poll() is None:
                tick.kill()
                tick.communicate()
    return _decisions(state_dir)


EXPECTED = {
    # the slots due while the 12:00 run runs are skipped, not run late
    "skip": [
        ("12:00", "attempt_started", ""),
        ("12:00", "attempt_finished", "succeeded"),
        ("12:01", "slot_skipped", "overlap"),
        ("12:02", "slot_skipped", "overlap"),
    ],
    # one slot waits (12:01, started when 12:00 ends, interrupted by the stop); 12:02 finds one
    # waiting already
    "queue": [
        ("12:00", "attempt_started", ""),
        ("12:00", "attempt_finished", "succeeded"),
        ("12:01", "attempt_started", ""),
        ("12:01", "attempt_finished", "interrupted"),
        ("12:02", "slot_skipped", "overlap"),
    ],
}


@pytest.mark.parametrize("overlap", ["skip", "queue"])
def test_daemon_decides_overlap_as_minute_ticks_do(
    overlap: str, tmp_path: Path, bytecode_cache: None
) -> None:
    daemon = _under_daemon(tmp_path / "a" / "jobs.d", tmp_path / "a" / "state", overlap)
    ticks = _under_minute_ticks(tmp_path / "b" / "jobs.d", tmp_path / "b" / "state", overlap)
    assert ticks == EXPECTED[overlap]
    assert daemon == EXPECTED[overlap]


def test_daemon_runs_no_more_attempts_at_once_than_max_concurrent(
    jobs_dir: Path, state_dir: Path, tmp_path: Path, bytecode_cache: None
) -> None:
    slot = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    spans = tmp_path / "spans"
    for name in ("a", "b", "c"):  # three lock keys, all due at once; two may run
        script = (
            f"echo start $(date +%s.%N) >> {spans}; sleep 1.5; echo end $(date +%s.%N) >> {spans}"
        )
        write(
            jobs_dir / f"{name}.yaml",
            json.dumps(
                {
                    "command": ["sh", "-c", script],
                    "lock": name,
                    "schedule": {"at": slot.isoformat()},
                }
            ),
        )
    # applied as of a minute before the slot: a slow start-up makes the slot late, never past
    earlier = (slot - timedelta(minutes=1)).isoformat()
    applied = run_agentjobs(
        "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply", "--now", earlier
    )
    assert applied.returncode == 0, applied.stderr
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), "daemon"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: spans.exists() and spans.read_text().count("end") == 3, timeout=15)
        err = _stop(daemon)
        assert daemon.returncode == 0, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    events = sorted(
        (float(stamp), 1 if kind == "start" else -1)
        for kind, stamp in (line.split() for line in spans.read_text().splitlines())
    )
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        peak = max(peak, running)
    assert peak == 2  # the default max_concurrent, with the third run after one of them


def test_a_queued_run_waiting_for_its_lock_key_does_not_spin_the_daemon(
    jobs_dir: Path, state_dir: Path, bytecode_cache: None
) -> None:
    from agentjobs import locks

    slot = datetime.now(UTC).replace(microsecond=0)
    write(
        jobs_dir / "held.yaml",
        json.dumps({"command": ["true"], "lock": "k", "schedule": {"at": slot.isoformat()}}),
    )
    earlier = (slot - timedelta(minutes=1)).isoformat()
    applied = run_agentjobs(
        "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply", "--now", earlier
    )
    assert applied.returncode == 0, applied.stderr
    # another process (a cron tick's attempt) holds the key: the run waits in the queue
    key = locks.try_lock(locks.key_file(state_dir / "locks", "k"))
    assert key is not None
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), "daemon"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: '"state":"queued"' in (state_dir / "runtime.json").read_text())

        def cpu() -> float:
            fields = Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu()
        time.sleep(2)
        assert cpu() - before < 0.1  # asleep until the key is looked at again, not polling
        key.release()
        err = _stop(daemon)
        assert daemon.returncode == 0, err
    finally:
        key.release()
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()


# -- log lines (issue 13 item 4) -----------------------------------------------------------------


def test_daemon_log_lines_are_json_objects_with_log_format_json(
    jobs_dir: Path, state_dir: Path, bytecode_cache: None
) -> None:
    write(jobs_dir / "a.yaml", "command: ['true']\n")
    argv = [sys.executable, "-m", "agentjobs", "--jobs-dir", str(jobs_dir)]
    argv += ["--state-dir", str(state_dir), "daemon", "--watch", "--log-format", "json"]
    daemon = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (state_dir / "applied.json").exists())
        second = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        err = _stop(daemon)
        assert daemon.returncode == 0, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()

    def lines(text: str, pid: int | None = None) -> list[tuple[str, str, str]]:
        out = []
        for line in text.splitlines():
            entry = json.loads(line)
            assert set(entry) == {"time", "level", "source", "message", "pid"}, line
            assert pid is None or entry["pid"] == pid
            assert datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0)
            out.append((entry["level"], entry["source"], entry["message"]))
        return out

    assert sorted(lines(err, daemon.pid)) == [
        ("INFO", "daemon", f"started for {state_dir}"),
        ("INFO", "daemon", "stopped"),
        ("INFO", "watch", "applied: 1 created, 0 updated, 0 deleted, 0 unchanged"),
        ("INFO", "watch", "create: a"),
    ]
    assert second.returncode == 2
    holder = f"daemon pid {daemon.pid}"
    assert lines(second.stderr) == [
        ("ERROR", "daemon", f"error: a daemon already runs for {state_dir} ({holder})")
    ]


def test_tick_and_status_never_import_loguru(
    jobs_dir: Path, state_dir: Path, bytecode_cache: None
) -> None:
    write(jobs_dir / "a.yaml", "command: ['true']\nschedule: {cron: '0 0 1 1 *'}\n")
    applied = run_agentjobs("--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply")
    assert applied.returncode == 0, applied.stderr
    script = (
        "import sys\n"
        "from agentjobs.cli import main\n"
        f"codes = [main(['--state-dir', {str(state_dir)!r}, verb]) for verb in ('tick', 'status')]\n"
        "print(codes, [m for m in ('loguru', 'watchfiles') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "[0, 0] []"
