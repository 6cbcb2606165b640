"""The file backend: atomic writes, format versions, the state lock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from agentjobs.store import AppliedJob
from agentjobs.store.files import atomic_write
from tests.conftest import run_agentjobs, write


def _job(name: str) -> AppliedJob:
    return AppliedJob(
        name, {"name": name}, "h" + name, "s" + name, f"{name}.yaml", "2026-11-23T12:00:00+00:00"
    )


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.json"
    target.parent.mkdir()
    atomic_write(target, b"one")
    atomic_write(target, b"two" * 100_000)
    assert target.read_bytes() == b"two" * 100_000
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_a_newer_format_is_refused_with_a_clear_message(cli, tmp_path: Path) -> None:
    state = tmp_path / "s"
    write(state / "format.json", '{"format": 99}\n')
    result = cli("--state-dir", str(state), "status")
    assert result.code == 2
    assert result.err == (
        f"agentjobs: error: state directory {state} has format 99, newer than this agentjobs "
        "understands (1); upgrade agentjobs\n"
    )


def test_damaged_state_is_one_line_not_a_traceback(cli, tmp_path: Path) -> None:
    state = tmp_path / "s"
    write(state / "format.json", '{"format": 1}\n')
    write(state / "applied.json", '{"jobs": ')
    result = cli("--state-dir", str(state), "status")
    assert result.code == 2
    assert result.err.startswith(f"agentjobs: error: {state}/applied.json is damaged (")
    assert result.err.endswith("); restore it from a backup\n")


def test_state_dir_that_is_a_file_is_refused(cli, jobs_dir: Path, tmp_path: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\n")
    blocker = write(tmp_path / "blocker", "x")
    result = cli("--jobs-dir", "repo/jobs.d", "--state-dir", str(blocker), "apply")
    assert (result.code, result.err) == (
        2,
        f"agentjobs: error: state directory {blocker} is not a directory\n",
    )


def test_lock_waiter_gives_up_after_its_timeout_naming_the_holder(
    jobs_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "s"
    write(jobs_dir / "a.yaml", "command: [a]\n")
    assert (
        run_agentjobs("--jobs-dir", str(jobs_dir), "--state-dir", str(state), "apply").returncode
        == 0
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from agentjobs.store.files import FileStore\n"
            "with FileStore(Path(sys.argv[1])).lock(5):\n"
            "    print('held', flush=True); time.sleep(30)\n",
            str(state),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        started = time.monotonic()
        result = run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", str(state), "apply", "--lock-timeout", "0.5"
        )
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
    assert result.returncode == 2
    assert result.stderr == (
        f"agentjobs: error: state directory {state} is locked by another agentjobs process "
        f"(pid {holder.pid}) for more than 0.5s; try again when it is done\n"
    )
    assert 0.5 <= waited < 5
    # the kernel released the dead holder's lock: the next apply goes straight through
    assert (
        run_agentjobs("--jobs-dir", str(jobs_dir), "--state-dir", str(state), "apply").returncode
        == 0
    )


def test_concurrent_applies_from_many_processes_end_consistent(tmp_path: Path) -> None:
    state = tmp_path / "s"
    dirs = []
    for i in range(8):
        folder = tmp_path / f"set{i}" / "jobs.d"
        write(folder / "common.yaml", f"command: [echo, '{i}']\n")
        for j in range(5):
            write(folder / f"job-{i}-{j}.yaml", f"command: [echo, '{i}', '{j}']\n")
        dirs.append(folder)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentjobs",
                "--jobs-dir",
                str(d),
                "--state-dir",
                str(state),
                "apply",
                "--prune",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in dirs
    ]
    results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=60)]]
    assert all(code == 0 for code, _ in results), results
    applied = json.loads((state / "applied.json").read_text())["jobs"]
    states = json.loads((state / "runtime.json").read_text())["jobs"]
    winners = {name.split("-")[1] for name in applied if name != "common"}
    assert len(winners) == 1, f"state mixes the sets of several applies: {sorted(applied)}"
    winner = winners.pop()
    assert set(applied) == {"common", *(f"job-{winner}-{j}" for j in range(5))}
    assert applied["common"]["spec"]["command"] == ["echo", winner]
    assert set(states) <= set(applied)
    # and the state agrees with that set of files: nothing left to do
    check = run_agentjobs("--jobs-dir", str(dirs[int(winner)]), "--state-dir", str(state), "plan")
    assert check.returncode == 0, check.stdout
