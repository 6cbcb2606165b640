"""`agentjobs watch`: a real watcher process applies valid saves and keeps the last good state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import wait_for, write


def _applied(state_dir: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    path = state_dir / "applied.json"
    return json.loads(path.read_text())["jobs"] if path.exists() else {}


def _save(path: Path, text: str) -> None:
    """Save the way editors do: write a temp file, rename it over the old one."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_watch_applies_valid_saves_and_keeps_the_last_good_state(
    jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "a.yaml", "command: [echo, one]\n")
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentjobs",
            "--jobs-dir",
            str(jobs_dir),
            "--state-dir",
            str(state_dir),
            "watch",
            "--prune",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "a" in _applied(state_dir))
        time.sleep(0.5)  # let the watcher start watching
        _save(jobs_dir / "b.yaml", "command: [echo, two]\n")
        wait_for(lambda: "b" in _applied(state_dir))
        before = (state_dir / "applied.json").read_bytes()
        _save(jobs_dir / "a.yaml", "command: [echo, one]\nsilence_timout: 5m\n")
        time.sleep(2.0)
        assert (state_dir / "applied.json").read_bytes() == before  # invalid: nothing applied
        _save(jobs_dir / "a.yaml", "command: [echo, fixed]\n")
        wait_for(lambda: _applied(state_dir)["a"]["spec"]["command"] == ["echo", "fixed"])
        (jobs_dir / "b.yaml").unlink()
        wait_for(lambda: "b" not in _applied(state_dir))  # --prune
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=15)
    assert watcher.returncode == 0, err
    assert out == ""  # log lines go to standard error (logs.py)
    assert "silence_timout: unknown key `silence_timout`; did you mean `silence_timeout`?" in err
    assert " ERROR   watch: 1 error in 1 file; the applied jobs stay as they were\n" in err
    assert " INFO    watch: create: b\n" in err and " INFO    watch: delete: b\n" in err
