"""Many real `agentjobs tick` processes at once: each slot runs once, lock keys never overlap.

Every job runs a probe (a tiny Python program) that appends `start ...` and `end ...` lines, with
`time.monotonic_ns()` (one system-wide clock), to one file with single O_APPEND writes; the
intervals between them are when the job's process really ran, so overlapping intervals on one
lock key are a mutual-exclusion failure (DESIGN.md invariant 1), and a job with two `start` lines
fired twice (invariant 2). Both tests run on the file backend and on PostgreSQL (the `state`
fixtures).
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import State, write

ROUNDS = int(os.environ.get("AGENTJOBS_CONCURRENCY_ROUNDS", "20"))
# fewer on PostgreSQL, where the database, not flock, does the work: each round costs ~2x there
PG_ROUNDS = int(os.environ.get("AGENTJOBS_CONCURRENCY_ROUNDS_PG", "4"))
TICKS = 20
JOBS = 10
KEYS = 3
ROUND_BOUND_S = 45.0  # every tick of a round exits within this (they are never meant to wait)

PROBE = """\
import os, sys, time
path, key, job, sleep = sys.argv[1:5]
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
ident = f"{key} {job} {os.environ['AGENTJOBS_RUN_ID']} {os.environ['AGENTJOBS_ATTEMPT']}"
os.write(fd, f"start {ident} {time.monotonic_ns()}\\n".encode())
time.sleep(float(sleep))
os.write(fd, f"end {ident} {time.monotonic_ns()}\\n".encode())
"""


@pytest.fixture(autouse=True)
def _bytecode(bytecode_cache: None) -> None:
    """Hundreds of real agentjobs processes: keep their bytecode (see conftest)."""


@dataclass(frozen=True)
class Run:
    key: str
    job: str
    run_id: str
    attempt: int
    start: int
    end: int | None


def _job_file(jobs_dir: Path, name: str, key: str, probe: Path, out: Path, sleep: float) -> None:
    argv = [sys.executable, "-S", str(probe), str(out), key, name, str(sleep)]
    workdir = jobs_dir.parent / "work"
    workdir.mkdir(exist_ok=True)
    write(
        jobs_dir / f"{name}.yaml",
        f"""
        schedule: {{every: 1h}}
        lock: {key}
        workdir: {json.dumps(str(workdir))}
        command: {json.dumps(argv)}
        """,
    )


def _probe_runs(path: Path) -> list[Run]:
    """The probe file as runs; every line must be whole (each was one O_APPEND write)."""
    starts: dict[tuple[str, int], tuple[str, str, int]] = {}
    ends: dict[tuple[str, int], int] = {}
    for line in path.read_text().splitlines():
        kind, key, job, run_id, attempt, stamp = line.split(" ")
        ident = (run_id, int(attempt))
        if kind == "start":
            assert ident not in starts, f"attempt {ident} of {job} started twice"
            starts[ident] = (key, job, int(stamp))
        else:
            assert kind == "end", line
            ends[ident] = int(stamp)
    assert set(ends) <= set(starts)
    return [
        Run(key, job, ident[0], ident[1], start, ends.get(ident))
        for ident, (key, job, start) in starts.items()
    ]


def _assert_no_overlap(runs: list[Run]) -> None:
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    for key, key_runs in by_key.items():
        key_runs.sort(key=lambda r: r.start)
        for before, after in itertools.pairwise(key_runs):
            assert before.end is not None and before.end < after.start, (
                f"lock key {key}: {before.job} (run {before.run_id}) and {after.job} "
                f"(run {after.run_id}) overlapped: {before} / {after}"
            )


def _records(state: State) -> list[dict[str, Any]]:
    """Every record. On files, with no crash, every line of every day file must parse too (the
    Store would skip a damaged one with a warning)."""
    if not state.shared:
        for path in sorted((Path(state.location) / "records").glob("*.jsonl")):
            data = path.read_bytes()
            assert data.endswith(b"\n"), f"{path} ends in a partial line"
            for number, line in enumerate(data.splitlines(), start=1):
                try:
                    assert isinstance(json.loads(line), dict)
                except ValueError:
                    pytest.fail(f"{path}:{number}: unparsable record {line[:200]!r}")
    return state.records()


def _tick(state: State, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", state.location, "tick", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen[str]], deadline: float) -> list[tuple[int, str, str]]:
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.communicate()
        pytest.fail(f"a tick did not exit within {ROUND_BOUND_S:g}s")
    return results


def test_twenty_ticks_at_once_run_each_due_job_once_and_never_overlap_a_key(
    cli, tmp_path: Path, jobs_dir: Path, backend: str, new_state: Callable[[str], State]
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    names = [f"job{i}" for i in range(JOBS)]
    keys = {name: f"key{i % KEYS}" for i, name in enumerate(names)}
    began = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = usage.ru_utime + usage.ru_stime
    round_times = []
    rounds = PG_ROUNDS if backend == "postgres" else ROUNDS
    for number in range(rounds):
        out = tmp_path / f"probe-{number}.txt"
        for name in names:
            _job_file(jobs_dir, name, keys[name], probe, out, 0.05)
        state = new_state(f"state-{number}")
        applied = cli("--jobs-dir", str(jobs_dir), "--state-dir", state.location, "apply")
        assert applied.code == 0, applied.out + applied.err

        start = time.monotonic()
        procs = [_tick(state) for _ in range(TICKS)]
        results = _finish(procs, start + ROUND_BOUND_S)
        round_times.append(time.monotonic() - start)
        where = f"round {number} ({state.location})"
        for code, stdout, stderr in results:
            assert code == 0, f"{where}: tick exited {code}: {stdout}{stderr}"
        reported = [line for _, stdout, _ in results for line in stdout.splitlines()]
        assert sorted(line.split(":")[0] for line in reported) == sorted(names), where
        assert all(" attempt 1 succeeded in " in line for line in reported), reported

        runs = _probe_runs(out)
        assert sorted(r.job for r in runs) == sorted(names), f"{where}: {runs}"
        assert all(r.key == keys[r.job] and r.attempt == 1 for r in runs), runs
        _assert_no_overlap(runs)

        records = _records(state)
        started = [r for r in records if r["event"] == "attempt_started"]
        finished = [r for r in records if r["event"] == "attempt_finished"]
        assert sorted(str(r["job"]) for r in started) == sorted(names), where
        assert sorted(str(r["job"]) for r in finished) == sorted(names), where
        assert {r["outcome"] for r in finished} == {"succeeded"}, finished
        assert {r["event"] for r in records} == {"attempt_started", "attempt_finished"}, where
        # the records and the processes agree about which run each job was
        assert {(r["job"], r["run_id"]) for r in finished} == {(r.job, r.run_id) for r in runs}
        # one slot per job (the deterministic queue id job@slot made racing enqueues idempotent)
        assert len({(r["job"], r["slot"]) for r in finished}) == JOBS

        runtime = state.runtime()
        assert runtime.queue == {}, where
        assert {s.last_outcome for s in runtime.jobs.values()} == {"succeeded"}
        assert state.held() == [], where
        # what a person reads afterwards says the same
        status = json.loads(cli("--state-dir", state.location, "-o", "json", "status").out)
        assert {(r["result"], r["running"], r["queued"]) for r in status} == {
            ("succeeded", False, 0)
        }, status
        history = json.loads(cli("--state-dir", state.location, "-o", "json", "history").out)
        assert sorted((r["job"], r["outcome"]) for r in history) == [
            (name, "succeeded") for name in sorted(names)
        ]
    total = time.monotonic() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\n{rounds} rounds of {TICKS} ticks: {total:.1f}s "
        f"(round max {max(round_times):.1f}s, mean {sum(round_times) / len(round_times):.1f}s; "
        f"child CPU {usage.ru_utime + usage.ru_stime - cpu_before:.1f}s)"
    )


def test_a_tick_runs_free_keys_and_exits_while_another_tick_holds_a_long_run(
    cli, tmp_path: Path, jobs_dir: Path, state: State
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = tmp_path / "probe.txt"
    long_s = 5.0
    _job_file(jobs_dir, "long", "key-a", probe, out, long_s)
    _job_file(jobs_dir, "next-on-a", "key-a", probe, out, 0.05)
    _job_file(jobs_dir, "on-b", "key-b", probe, out, 0.05)
    # the long job goes first: priority orders the queue
    text = (jobs_dir / "long.yaml").read_text()
    (jobs_dir / "long.yaml").write_text(text + "priority: high\n")
    text = (jobs_dir / "next-on-a.yaml").read_text()
    (jobs_dir / "next-on-a.yaml").write_text(text + "priority: low\n")
    applied = cli("--jobs-dir", str(jobs_dir), "--state-dir", state.location, "apply")
    assert applied.code == 0, applied.out + applied.err

    # tick 1 has one worker: it claims `long` (high) and holds key-a for 5 s
    first = _tick(state, "--max-concurrent", "1")
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_text().startswith("start key-a long ")):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "tick 1 never started the long job"
            time.sleep(0.01)
        long_started = time.monotonic()

        began = time.monotonic()
        second = _tick(state)
        stdout, stderr = second.communicate(timeout=30)
        took = time.monotonic() - began
        assert second.returncode == 0, stdout + stderr
        assert stdout.startswith("on-b: attempt 1 succeeded"), stdout + stderr
        assert len(stdout.splitlines()) == 1, stdout
        # nothing waited on key-a: tick 2 was done well before `long` ended
        assert took < long_s / 2, f"tick 2 took {took:.1f}s"
        assert time.monotonic() - long_started < long_s
        assert first.poll() is None
        lines = out.read_text().splitlines()
        assert [line.split(" ")[:3] for line in lines] == [
            ["start", "key-a", "long"],
            ["start", "key-b", "on-b"],
            ["end", "key-b", "on-b"],
        ]
        states = {item.job: item.state for item in state.queue()}
        assert states == {"long": "running", "next-on-a": "queued"}
    finally:
        stdout, stderr = first.communicate(timeout=60)
    print(f"\ntick 2 ran key-b and exited in {took:.2f}s while key-a was held")
    # tick 1's worker goes on to the item it left queued once the key is free
    assert first.returncode == 0, stdout + stderr
    assert [line.split(":")[0] for line in stdout.splitlines()] == ["long", "next-on-a"]
    runs = _probe_runs(out)
    assert sorted(r.job for r in runs) == ["long", "next-on-a", "on-b"]
    _assert_no_overlap(runs)
    assert state.queue() == []
    assert state.held() == []
