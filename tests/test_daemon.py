"""The daemon: sleeps until the next slot, wakes on apply, one per state dir, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import run_agentjobs, wait_for, write


def test_daemon_wakes_on_apply_and_starts_a_job_at_its_slot(
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
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=15)
        assert daemon.returncode == 0, err
        assert "daemon stopped" in err
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
        assert "agentjobs: watch: create: soon" in err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
