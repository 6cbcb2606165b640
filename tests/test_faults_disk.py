"""Disk faults, held with the real fault (issue 10, items 1, 3 and 10): a torn last record line,
a full file system (a small tmpfs), a read-only file system (a tmpfs remounted read-only) and a
state directory owned by another user (the CLI run under another uid). Each one is one line
naming the path, exit 2, no temp files, and nothing written before is lost.

These tests need root (mount, setuid) and util-linux (`mount`, `setpriv`).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentjobs import records
from agentjobs.errors import StateWriteError, UserError
from agentjobs.store.files import atomic_write
from tests.conftest import REPO, run_agentjobs, wait_for, write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
T0 = "2026-11-23T12:00:00Z"
DAY = datetime(2026, 11, 23, 12, tzinfo=UTC)


def job(*actions: str, **fields: Any) -> str:
    doc: dict[str, Any] = {"command": [sys.executable, FAKE, *actions]}
    doc.update(fields)
    return json.dumps(doc)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """`tmpfs(path, size)` mounts a real tmpfs of `size` at `path`; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "256k") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
        )
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"x" * size) == size:
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def record_lines(state: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted((state / "records").glob("*.jsonl")):
        lines += [line for line in path.read_bytes().split(b"\n") if line]
    return lines


def parsed(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record_lines(state)]


def temp_files(state: Path) -> list[str]:
    return sorted(str(p) for p in state.rglob("*.tmp")) + sorted(
        str(p) for p in state.glob("crash-*")
    )


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("agentjobs: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


def aj(state: Path, *args: str, jobs: Path | None = None, **kw: Any) -> Any:
    extra = ["--jobs-dir", str(jobs)] if jobs is not None else []
    return run_agentjobs(*extra, "--state-dir", str(state), *args, **kw)


# -- torn records --------------------------------------------------------------------------


def test_an_append_after_a_torn_last_line_leaves_every_other_line_readable(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    records.append(folder, [{"event": "a", "n": 1}], DAY)
    path = records.day_file(folder, DAY)
    with open(path, "ab") as handle:  # a crash in the middle of an append
        handle.write(b'{"event":"attempt_finished","run_id":"X","out')
    records._forget()  # as in a new process: nothing of the day file open yet
    records.append(folder, [{"event": "b", "n": 2}], DAY)
    lines = path.read_bytes().split(b"\n")
    good = [json.loads(line) for line in lines if line and not line.endswith(b'"out')]
    assert [r["n"] for r in good] == [1, 2]
    assert sum(1 for line in lines if line.endswith(b'"out')) <= 1
    assert path.read_bytes().endswith(b"\n")


def test_an_append_after_another_process_tore_the_tail_is_readable(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    records.append(folder, [{"event": "a", "n": 1}], DAY)  # this process keeps the file open
    path = records.day_file(folder, DAY)
    with open(path, "ab") as handle:  # another process dies in the middle of its append
        handle.write(b'{"event":"b","n":')
    records.append(folder, [{"event": "c", "n": 3}], DAY)
    assert path.read_bytes() == b'{"event":"a","n":1}\n{"event":"b","n":\n{"event":"c","n":3}\n'


def test_a_tick_after_a_torn_last_line_writes_readable_records(tmp_path: Path) -> None:
    jobs, state = tmp_path / "jobs.d", tmp_path / "state"
    write(jobs / "hello.yaml", job("print", "hi", schedule={"every": "1h"}))
    assert aj(state, "apply", "--now", T0, jobs=jobs).returncode == 0
    assert aj(state, "tick", "--now", T0, jobs=jobs).returncode == 0
    day = state / "records" / "2026-11-23.jsonl"
    with open(day, "ab") as handle:
        handle.write(b'{"event":"attempt_started","run_id":"torn","ti')
    result = aj(state, "tick", "--now", "2026-11-23T13:30:00Z", jobs=jobs)
    assert result.returncode == 0, result.stderr
    lines = [line for line in day.read_bytes().split(b"\n") if line]
    bad = [line for line in lines if b'"torn"' in line]
    assert len(bad) <= 1 and all(line.endswith(b'"ti') for line in bad)
    good = [json.loads(line) for line in lines if b'"torn"' not in line]
    finished = [r for r in good if r["event"] == "attempt_finished"]
    assert [r["outcome"] for r in finished] == ["succeeded", "succeeded"]


def test_a_short_write_on_a_full_disk_is_cut_back_and_raises(tmp_path: Path, tmpfs: Any) -> None:
    disk = tmpfs(tmp_path / "disk", "64k")
    folder = disk / "records"
    records.append(folder, [{"event": "first", "n": 1}], DAY)
    path = records.day_file(folder, DAY)
    before = path.read_bytes()
    filler = fill(disk)
    # room is left in the day file's last page only: the write below is cut short (or refused)
    with pytest.raises(StateWriteError) as caught:
        records.append(folder, [{"event": "big", "text": "y" * 20000}], DAY)
    assert isinstance(caught.value, UserError)
    assert str(path) in str(caught.value) and "No space left" in str(caught.value)
    assert path.read_bytes() == before  # no fragment left behind
    filler.unlink()
    records.append(folder, [{"event": "after", "n": 3}], DAY)
    assert [json.loads(x)["event"] for x in path.read_bytes().splitlines()] == ["first", "after"]


# -- atomic writes -------------------------------------------------------------------------


def test_atomic_write_on_a_full_disk_raises_one_error_and_leaves_no_temp_file(
    tmp_path: Path, tmpfs: Any
) -> None:
    disk = tmpfs(tmp_path / "disk", "64k")
    atomic_write(disk / "runtime.json", b"{}\n")
    filler = fill(disk)
    with pytest.raises(StateWriteError) as caught:
        atomic_write(disk / "runtime.json", b"x" * 50000)
    assert "runtime.json" in str(caught.value) and "free space" in str(caught.value)
    assert (disk / "runtime.json").read_bytes() == b"{}\n"
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "runtime.json"]
    filler.unlink()


def test_a_metrics_textfile_on_a_full_disk_keeps_the_last_one_whole(
    tmp_path: Path, tmpfs: Any
) -> None:
    state = tmp_path / "state"
    collector = tmpfs(tmp_path / "collector", "64k")
    target = collector / "agentjobs.prom"
    assert aj(state, "metrics", "--textfile", str(target), "--now", T0).returncode == 0
    before = target.read_bytes()
    filler = fill(collector)
    one_line_error(aj(state, "metrics", "--textfile", str(target)), str(target), "free space")
    assert target.read_bytes() == before  # the collector reads the last whole file
    assert sorted(p.name for p in collector.iterdir()) == ["agentjobs.prom", "filler"]
    filler.unlink()


# -- the CLI on a full disk ----------------------------------------------------------------


def test_a_full_disk_is_one_line_exit_2_and_loses_nothing(tmp_path: Path, tmpfs: Any) -> None:
    jobs = tmp_path / "jobs.d"
    state = tmpfs(tmp_path / "state", "512k")
    write(jobs / "hello.yaml", job("print", "hi", schedule={"every": "1h"}))
    write(jobs / "broken.yaml", job("exit", "3", schedule={"every": "1h"}, retry={"attempts": 1}))
    assert aj(state, "apply", "--now", T0, jobs=jobs).returncode == 0
    assert aj(state, "tick", "--now", T0, jobs=jobs).returncode == 1  # broken: dead letter
    before = parsed(state)
    dead = json.loads(aj(state, "-o", "json", "dlq", "list").stdout)
    assert len(dead) == 1
    filler = fill(state)

    one_line_error(aj(state, "tick", "--now", "2026-11-23T13:30:00Z", jobs=jobs), str(state))
    write(jobs / "more.yaml", job("print", "more", schedule={"every": "2h"}))
    one_line_error(aj(state, "apply", "--now", "2026-11-23T13:30:00Z", jobs=jobs), str(state))
    one_line_error(aj(state, "dlq", "resolve", dead[0]["id"], "--note", "seen"), str(state))
    one_line_error(aj(state, "run", "hello", jobs=jobs), str(state))
    assert temp_files(state) == []

    filler.unlink()
    assert parsed(state)[: len(before)] == before  # every line still parses; nothing lost
    assert aj(state, "status").returncode == 0
    result = aj(state, "tick", "--now", "2026-11-23T13:30:00Z", jobs=jobs)
    assert result.returncode == 1, result.stderr  # both ran again; broken failed again
    finished = [r for r in parsed(state) if r["event"] == "attempt_finished"]
    assert sorted(r["job"] for r in finished) == ["broken", "broken", "hello", "hello"]
    assert temp_files(state) == []


def test_a_disk_that_fills_while_jobs_run_is_one_line_exit_2_and_keeps_the_real_outcomes(
    tmp_path: Path, tmpfs: Any
) -> None:
    jobs = tmp_path / "jobs.d"
    state = tmpfs(tmp_path / "state", "512k")
    filler = state / "filler"
    fill = (
        f"f = open({str(filler)!r}, 'wb')\n"
        "try:\n    while True: f.write(b'x' * 4096); f.flush()\n"
        "except OSError: pass\n"  # silent: see below
    )
    doc = {"command": [sys.executable, "-c", fill], "schedule": {"every": "1h"}}
    write(jobs / "filler.yaml", json.dumps(doc))
    # and a job that prints a lot while the disk is full: its log loses what the disk refused
    # (said in the log), the attempt goes on and is recorded as it really ended
    talk = "import time; time.sleep(1); [print('y' * 1000, flush=True) for _ in range(200)]"
    doc = {"command": [sys.executable, "-c", talk], "schedule": {"every": "1h"}}
    write(jobs / "printer.yaml", json.dumps(doc))
    assert aj(state, "apply", "--now", T0, jobs=jobs).returncode == 0
    result = aj(state, "tick", "--now", T0, jobs=jobs)
    one_line_error(result, str(state), "free space")
    assert temp_files(state) == []
    filler.unlink()

    def settled() -> bool:
        started = {
            (r["run_id"], r["attempt"]) for r in parsed(state) if r["event"] == "attempt_started"
        }
        done = {
            (r["run_id"], r["attempt"]) for r in parsed(state) if r["event"] == "attempt_finished"
        }
        queue = json.loads((state / "runtime.json").read_bytes())["queue"].values()
        running = [i for i in queue if i["state"] == "running"]
        return bool(started) and started == done and not running

    # the attempts' own finish records land once space is back, and their supervisors settle
    # them (the printer shares the filler's lock key: it waits for that)
    wait_for(settled, timeout=30)
    again = aj(state, "tick", "--now", "2026-11-23T12:01:00Z", jobs=jobs)
    assert again.returncode == 0, again.stderr
    finished = [r for r in parsed(state) if r["event"] == "attempt_finished"]
    assert len(finished) == 2, (result.stderr, again.stdout, again.stderr, parsed(state))
    # exactly one finish per attempt, with its real outcome (both jobs exited 0)
    assert sorted((r["job"], r["outcome"]) for r in finished) == [
        ("filler", "succeeded"),
        ("printer", "succeeded"),
    ]
    assert len({(r["run_id"], r["attempt"]) for r in finished}) == 2
    assert temp_files(state) == []


# -- read-only file system, another user -------------------------------------------------


def _snapshot(state: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()}


def test_a_read_only_state_dir_is_one_line_exit_2_and_unchanged(tmp_path: Path, tmpfs: Any) -> None:
    jobs = tmp_path / "jobs.d"
    state = tmpfs(tmp_path / "state", "1m")
    write(jobs / "hello.yaml", job("print", "hi", schedule={"every": "1h"}))
    assert aj(state, "apply", "--now", T0, jobs=jobs).returncode == 0
    assert aj(state, "tick", "--now", T0, jobs=jobs).returncode == 0
    before = _snapshot(state)
    subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
    try:
        one_line_error(
            aj(state, "tick", "--now", "2026-11-23T13:30:00Z", jobs=jobs),
            str(state),
            "read-only",
        )
        write(jobs / "more.yaml", job("print", "more", schedule={"every": "2h"}))
        one_line_error(aj(state, "apply", jobs=jobs), str(state), "read-only")
        assert aj(state, "status").returncode == 0  # reading still works
        assert aj(state, "history").returncode == 0
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
    assert _snapshot(state) == before


def test_a_state_dir_owned_by_another_user_is_one_line_exit_2_and_unchanged(
    tmp_path: Path,
) -> None:
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"agentjobs-uid-{os.getpid()}"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    try:
        jobs, state = base / "jobs.d", base / "state"
        write(jobs / "hello.yaml", job("print", "hi", schedule={"every": "1h"}))
        jobs.chmod(0o755)
        assert aj(state, "apply", "--now", T0, jobs=jobs).returncode == 0
        state.chmod(0o700)
        before = _snapshot(state)
        state_args = ["--state-dir", str(state)]
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        for verb in (["tick"], ["status"], ["apply"], ["dlq", "list"], ["history"]):
            argv = [sys.executable, "-m", "agentjobs", "--jobs-dir", str(jobs), *state_args]
            result = subprocess.run(
                [*nobody, *argv, *verb],
                cwd="/",
                env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/"},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            one_line_error(result, str(state), "Permission denied")
        assert _snapshot(state) == before
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
