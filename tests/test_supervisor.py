"""The per-attempt supervisor under real faults (issue 10): a tick killed with -9 or stopped with
SIGSTOP, a supervisor killed with -9, a grandchild that escapes with setsid(), a container that
comes back under a new host name, a pid that now belongs to someone else.

The first and third tests run on both backends (the `state` fixture); the others are about keys
held with flock on one host, and say why they stay on the file backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import State, run_agentjobs, wait_for, write
from tests.test_engine import _dead, _spawn, job


def _apply(jobs_dir: Path, state: State) -> None:
    done = run_agentjobs("--jobs-dir", str(jobs_dir), "--state-dir", state.location, "apply")
    assert done.returncode == 0, done.stderr


def _held_keys(state: State) -> list[str]:
    """The lock keys (not the concurrency slots) some process holds, on files."""
    return [name for name in state.held() if name.startswith("key-")]


def _started(state: State) -> dict[str, Any]:
    wait_for(lambda: state.records("attempt_started"))
    return state.records("attempt_started")[0]


@pytest.mark.parametrize("verb", ["tick", "daemon"])
def test_a_killed_tick_leaves_its_attempt_supervised_the_timeout_enforced_and_recorded(
    jobs_dir: Path, state: State, verb: str
) -> None:
    # the promise: a runner that dies never leaves its agent unsupervised (timeout 3 s, the
    # job would sleep 60 s), and the attempt's real outcome is recorded, settled, not `lost`
    write(
        jobs_dir / "slow.yaml",
        job(
            "print",
            "working",
            "sleep",
            "60",
            schedule={"every": "1d"},
            timeout="3s",
            kill_grace="1s",
            retry={"attempts": 1},
        ),
    )
    _apply(jobs_dir, state)
    runner = _spawn(state.location, verb)
    started = _started(state)
    os.killpg(runner.pid, signal.SIGKILL)  # the tick (or daemon) and its whole group
    runner.communicate(timeout=10)
    wait_for(lambda: state.records("attempt_finished"), timeout=15)
    finished = state.records("attempt_finished")
    assert [(r["outcome"], r["next"]) for r in finished] == [("timeout", "dead_letter")]
    assert finished[0]["duration_s"] < 6, finished[0]
    assert finished[0]["pid"] == started["supervisor"]["pid"] != runner.pid
    wait_for(lambda: _dead(started["child_pid"]) and _dead(started["supervisor"]["pid"]))
    assert state.queue() == []  # settled by the supervisor, no later tick needed
    wait_for(lambda: state.held() == [], timeout=5)
    assert [e["id"] for e in state.dead_letters()] == [started["run_id"]]


def test_a_stopped_tick_does_not_stop_its_attempts_limits_and_resumes_cleanly(
    jobs_dir: Path, state_dir: Path
) -> None:
    # files only: a frozen tick keeps its concurrency slot's flock but not the key's; with
    # PostgreSQL the key and the slot are one lease, renewed and released by the supervisor
    state = State.files(state_dir)
    write(
        jobs_dir / "slow.yaml",
        job(
            "sleep",
            "60",
            schedule={"every": "1d"},
            timeout="2s",
            kill_grace="1s",
            retry={"attempts": 1},
        ),
    )
    _apply(jobs_dir, state)
    tick = _spawn(state.location, "tick")
    started = _started(state)
    os.kill(tick.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: state.records("attempt_finished"), timeout=10)
        assert state.records("attempt_finished")[0]["outcome"] == "timeout"
        wait_for(lambda: _dead(started["child_pid"]))
        # the tick cannot settle it: its supervisor does (after ACK_WAIT)
        wait_for(lambda: state.queue() == [], timeout=15)
        # a frozen tick holds no key (it keeps its concurrency slot, as a stopped worker would)
        wait_for(lambda: _held_keys(state) == [], timeout=5)
    finally:
        os.kill(tick.pid, signal.SIGCONT)
    out, err = tick.communicate(timeout=15)
    assert tick.returncode == 1, err  # it reports the attempt its supervisor recorded
    assert "slow: attempt 1 timeout" in out
    assert len(state.records("attempt_finished")) == 1  # recorded once


def test_work_that_finished_after_its_tick_died_is_recorded_as_it_ended_and_never_rerun(
    jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    write(
        jobs_dir / "fine.yaml",
        job(
            "append", str(marker), "ran", "sleep", "1.5", "print", "done", schedule={"every": "1d"}
        ),
    )
    _apply(jobs_dir, state)
    tick = _spawn(state.location, "tick")
    _started(state)
    os.killpg(tick.pid, signal.SIGKILL)
    tick.communicate(timeout=10)
    wait_for(lambda: state.records("attempt_finished"), timeout=15)
    later = run_agentjobs("--state-dir", state.location, "tick")
    assert (later.returncode, later.stdout) == (0, ""), later.stderr
    finished = state.records("attempt_finished")
    assert [(r["outcome"], r["next"]) for r in finished] == [("succeeded", "done")]
    assert marker.read_text() == "ran\n"  # ran once: nothing retried a success
    assert state.runtime().jobs["fine"].last_outcome == "succeeded"


def test_a_killed_supervisor_is_recovered_as_lost_and_retried(
    jobs_dir: Path, state_dir: Path
) -> None:
    # files only: the orphaned job keeps the key through the flock descriptor it inherited;
    # with PostgreSQL the supervisor's fence kills it (test_crash.py kills supervisors on both)
    state = State.files(state_dir)
    write(
        jobs_dir / "victim.yaml",
        job(
            "sleep",
            "60",
            schedule={"every": "1d"},
            retry={"attempts": 2, "backoff": {"initial": "1h", "max": "1h", "jitter": "0s"}},
        ),
    )
    _apply(jobs_dir, state)
    tick = _spawn(state.location, "tick")
    started = _started(state)
    os.kill(started["supervisor"]["pid"], signal.SIGKILL)
    out, err = tick.communicate(timeout=15)
    assert tick.returncode == 1 and "ended without a result" in err, (out, err)
    # its job still holds the key (inherited descriptor): nobody runs beside it
    meanwhile = run_agentjobs("--state-dir", state.location, "tick")
    assert (meanwhile.returncode, meanwhile.stdout) == (0, ""), meanwhile.stderr
    os.killpg(started["child_pid"], signal.SIGKILL)
    wait_for(lambda: _dead(started["child_pid"]))
    recovered = run_agentjobs("--state-dir", state.location, "tick")
    assert "attempt 1 was lost" in recovered.stderr, recovered.stderr
    finished = state.records("attempt_finished")
    assert [(r["outcome"], r["next"]) for r in finished] == [("lost", "retry")]
    [item] = state.queue()
    assert (item.state, item.attempt) == ("queued", 2)


def test_a_grandchild_that_escapes_with_setsid_keeps_the_key_and_dies_with_its_attempt(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    # files only: about the key's flock, inherited by whatever the job starts
    state = State.files(state_dir)
    # two jobs in one checkout (one lock key); the first leaves a daemon that calls setsid()
    # and closes every descriptor it inherited, the lock key's among them
    pidfile = tmp_path / "daemon.pid"
    probe = f"kill -0 $(cat {pidfile}) 2>/dev/null && echo OVERLAP || echo alone"
    write(
        jobs_dir / "a.yaml",
        job(
            "daemonize", "30", str(pidfile), "print", "a done",
            schedule={"every": "1d"}, lock="repo", priority="high",
        ),
    )  # fmt: skip
    write(
        jobs_dir / "b.yaml",
        json.dumps({"command": probe, "shell": True, "schedule": {"every": "1d"}, "lock": "repo"}),
    )
    _apply(jobs_dir, state)
    done = run_agentjobs("--state-dir", state.location, "tick", "--max-concurrent", "2")
    assert done.returncode == 0, done.stderr
    daemon = int(pidfile.read_text())
    assert _dead(daemon)  # stopped with the attempt that started it
    finished = {r["job"]: r for r in state.records("attempt_finished")}
    assert finished["b"]["output_tail"] == "alone\n"
    assert finished["a"]["finished_at"] <= finished["b"]["started_at"]


def _orphan(state: State, wrap: list[str]) -> dict[str, Any]:
    """Start a tick inside `wrap` (a namespace), wait for its attempt, then end everything in it
    at once (a container that goes away)."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTJOBS_HOST"}
    outer = subprocess.Popen(
        [*wrap, sys.executable, "-m", "agentjobs", "--state-dir", state.location, "tick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    started = _started(state)
    return {"started": started, "outer": outer}


def _kill_everything(started: dict[str, Any], outer: subprocess.Popen[str]) -> None:
    os.killpg(outer.pid, signal.SIGKILL)
    outer.communicate(timeout=10)


def test_an_attempt_of_a_container_that_came_back_under_a_new_host_name_is_recovered(
    jobs_dir: Path, state_dir: Path
) -> None:
    # files only: a free flock, not the host name, says the attempt is orphaned; with
    # PostgreSQL only the lease does, whatever the host (test_postgres_hosts.py)
    state = State.files(state_dir)
    write(jobs_dir / "work.yaml", job("sleep", "60", schedule={"every": "1d"}))
    _apply(jobs_dir, state)
    got = _orphan(state, ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c",
                              'hostname old-container && exec "$@"', "sh"])  # fmt: skip
    assert got["started"]["host"] == "old-container"
    _kill_everything(got["started"], got["outer"])  # the namespace's init dies: all of it
    wait_for(lambda: state.held() == [])
    env = {k: v for k, v in os.environ.items() if k != "AGENTJOBS_HOST"}
    recovered = subprocess.run(
        [sys.executable, "-m", "agentjobs", "--state-dir", state.location, "tick"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert "attempt 1 was lost" in recovered.stderr, recovered.stderr
    finished = state.records("attempt_finished")
    assert (finished[0]["outcome"], finished[0]["host"]) == ("lost", os.uname().nodename)


def test_an_attempt_whose_tick_pid_now_belongs_to_another_process_is_recovered(
    jobs_dir: Path, state_dir: Path
) -> None:
    # files only: as above, a pid reused by another process must not keep a flock-free
    # attempt alive; with PostgreSQL pids play no part in recovery
    state = State.files(state_dir)
    # in a new pid namespace the tick is pid 1 (or 2): outside, that pid is init, alive for as
    # long as the machine runs
    write(jobs_dir / "work.yaml", job("sleep", "60", schedule={"every": "1d"}))
    _apply(jobs_dir, state)
    got = _orphan(state, ["unshare", "--pid", "--fork", "--mount-proc"])
    [queued] = state.queue()
    assert queued.pid in (1, 2) and os.path.exists(f"/proc/{queued.pid}")
    _kill_everything(got["started"], got["outer"])
    wait_for(lambda: state.held() == [])
    began = time.monotonic()
    recovered = run_agentjobs("--state-dir", state.location, "tick")
    assert "attempt 1 was lost" in recovered.stderr, recovered.stderr
    assert time.monotonic() - began < 30
    assert state.records("attempt_finished")[0]["outcome"] == "lost"


def test_the_agent_gets_default_signal_dispositions_not_the_supervisors(
    ajs, jobs_dir: Path, state: State
) -> None:
    # the supervisor shrugs off SIGHUP; an ignored signal would stay ignored across exec, so an
    # agent started by it would never hear a hang-up (found by a helper testing the daemon)
    write(
        jobs_dir / "dispositions.yaml",
        json.dumps(
            {
                "command": ["sh", "-c", "grep '^SigIgn:' /proc/self/status"],
                "schedule": {"every": "1d"},
            }
        ),
    )
    assert ajs("apply").code == 0
    assert ajs("tick").code == 0
    tail = state.records("attempt_finished")[0]["output_tail"]
    ignored = int(tail.split(":")[1].strip(), 16)
    assert ignored & (1 << (signal.SIGHUP - 1)) == 0, tail
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0, tail
