"""`agentjobs cancel RUN` and Ctrl-C on `agentjobs run` (issue 13): a person's decision ends the
run, never retried, never dead-lettered. Real processes; each test that touches state runs on
the file backend and on PostgreSQL (the `state` fixture), unless it says why not.

The running attempt is cancelled through the state (the supervisor looks every second), so a
test waits about a second plus the job's kill_grace (500 ms here) for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agentjobs import query
from tests.conftest import REPO, State, run_agentjobs, wait_for, write
from tests.test_engine import _dead, job

SCHEMA = json.loads((REPO / "schema" / "run-record.schema.json").read_text())


@pytest.fixture(autouse=True)
def _bytecode(bytecode_cache: None) -> None:
    """Real agentjobs processes: keep their bytecode (see conftest)."""


def _slow(jobs_dir: Path, child: Path) -> None:
    """A job that sleeps and, on SIGTERM, starts a child that would outlive it (it ignores
    SIGTERM; its pid in `child`) and exits 0; three attempts."""
    outlive = f"(trap '' TERM; exec sleep 30) & echo \\$! > {child}; exit 0"
    trap = f'trap "{outlive}" TERM; echo started; sleep 60 & wait'
    doc = {"command": ["bash", "-c", trap], "kill_grace": "500ms", "retry": {"attempts": 3}}
    write(jobs_dir / "slow.yaml", json.dumps(doc))


def _apply(jobs_dir: Path, state: State) -> None:
    done = run_agentjobs("--jobs-dir", str(jobs_dir), "--state-dir", state.location, "apply")
    assert done.returncode == 0, done.stderr


def _agentjobs(state: State, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """`agentjobs --state-dir STATE ARGS` in the background, in a session of its own, stdin
    from /dev/null unless given (not a terminal)."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", state.location, *args],
        text=True,
        start_new_session=True,
        **popen,
    )


def _running(state: State) -> dict[str, Any]:
    """The attempt_started record, once the job is past its `trap` (it printed "started")."""
    wait_for(lambda: state.records("attempt_started"))
    started = state.records("attempt_started")[0]
    log = Path(started["log_path"])
    wait_for(lambda: log.exists() and "started" in log.read_text())
    return started


def _group_gone(pgid: int) -> bool:
    """No live process is left in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return False
    return True


def test_a_queued_run_is_removed_with_a_cancelled_record_and_never_runs(
    ajs: Callable[..., Any], jobs_dir: Path, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USER", "alice")
    backoff = {"initial": "1h", "jitter": "0s"}
    write(jobs_dir / "flaky.yaml", job("exit", "1", retry={"attempts": 3, "backoff": backoff}))
    assert ajs("apply").code == 0
    assert ajs("run", "flaky").code == 1  # attempt 2 waits an hour, queued
    [retry] = state.queue()
    assert (retry.state, retry.attempt) == ("queued", 2)
    done = ajs("cancel", retry.run_id[:18], "--reason", "not today")
    assert (done.code, done.err) == (0, "")
    assert done.out == (
        f"cancelled run {retry.run_id} (job flaky): removed from the queue before attempt 2 ran\n"
    )
    assert state.queue() == [] and state.dead_letters() == []
    [record] = state.records("cancelled")
    assert (record["run_id"], record["attempt"], record["outcome"]) == (
        retry.run_id,
        2,
        "cancelled",
    )
    assert (record["by"], record["reason"]) == ("alice", "not today")
    for each in state.records():
        jsonschema.validate(each, SCHEMA)
    assert state.runtime().jobs["flaky"].last_outcome == "cancelled"
    with state.store() as store:  # what `history` and `describe` read
        rows = [(r.attempt, r.outcome, r.detail) for r in query.history(store, job="flaky")]
    assert rows == [(1, "failed", "exit code 1"), (2, "cancelled", "not today")]
    assert ajs("tick", "--now", "2099-01-01T00:00:00Z").out == ""  # nothing left to run
    assert len(state.records("attempt_started")) == 1
    again = ajs("-o", "json", "cancel", retry.run_id)
    assert again.code == 0
    said = json.loads(again.out)
    assert (said["already"], said["was"], said["by"]) == (True, "over", "alice")


def test_a_prefix_names_one_run_an_ambiguous_one_lists_them_a_finished_or_unknown_one_is_refused(
    ajs: Callable[..., Any], jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "ok.yaml", job("print", "hi"))
    backoff = {"initial": "1h", "jitter": "0s"}
    write(jobs_dir / "flaky.yaml", job("exit", "1", retry={"attempts": 3, "backoff": backoff}))
    assert ajs("apply").code == 0
    assert ajs("run", "ok").code == 0
    assert ajs("run", "flaky").code == 1  # its retry waits, queued
    ok = state.records("attempt_finished")[0]
    [flaky] = state.queue()
    a, b = ok["run_id"], flaky.run_id
    common = a[: next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)]
    ambiguous = ajs("cancel", common)
    assert (ambiguous.code, ambiguous.out) == (2, "")
    first, second = sorted([ok["run_id"], flaky.run_id])
    described = {ok["run_id"]: f"job ok, succeeded at {ok['time']}", flaky.run_id: "job flaky"}
    assert ambiguous.err == (
        f"agentjobs: error: run {common} is ambiguous: 2 runs start with it: "
        f"{first} ({described[first]}{', queued' if first == flaky.run_id else ''}), "
        f"{second} ({described[second]}{', queued' if second == flaky.run_id else ''}); "
        "give more of the id\n"
    )
    over = ajs("cancel", ok["run_id"][:-3].lower())
    assert (over.code, over.err) == (
        2,
        f"agentjobs: error: run {ok['run_id']} is over: job ok, succeeded at {ok['time']}; "
        "nothing to cancel\n",
    )
    unknown = ajs("cancel", "01ZZZZZZ")
    assert (unknown.code, unknown.err) == (
        2,
        "agentjobs: error: no run 01ZZZZZZ: no run id starts with it\n",
    )
    assert state.queue() == [flaky]  # none of them cancelled anything
    assert state.records("cancelled") == []


def test_a_running_attempt_is_cancelled_from_another_process_its_whole_group_stopped_not_retried(
    ajs: Callable[..., Any], jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    child = tmp_path / "child.pid"
    _slow(jobs_dir, child)
    _apply(jobs_dir, state)
    runner = _agentjobs(state, "run", "slow", "--host", "far-away")
    try:
        started = _running(state)
        run_id = started["run_id"]
        cancel = run_agentjobs(
            "--state-dir", state.location, "cancel", run_id[:16], env={"USER": "alice"}
        )
        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout.startswith(
            f"cancelled run {run_id} (job slow, attempt 1 on host far-away): stopped with SIG"
        )
        out, err = runner.communicate(timeout=20)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 1, err  # the attempt did not succeed
    assert "agentjobs: slow: cancelled (cancelled by alice: agentjobs cancel) in " in err
    assert out.startswith("started\n")
    # the trap's child ignores SIGTERM: gone all the same (kill_grace, then SIGKILL)
    assert _dead(int(child.read_text())) and _group_gone(started["child_pid"])
    [finished] = state.records("attempt_finished")
    assert (finished["outcome"], finished["next"]) == ("cancelled", "done")
    assert (finished["by"], finished["error"]) == ("alice", "cancelled by alice: agentjobs cancel")
    assert finished["cancelled_at"] <= finished["finished_at"]
    jsonschema.validate(finished, SCHEMA)
    assert state.queue() == [] and state.dead_letters() == []
    wait_for(lambda: state.held() == [], timeout=5)
    assert len(state.records("attempt_started")) == 1
    again = ajs("cancel", run_id)
    assert (again.code, again.out) == (
        0,
        f"run {run_id} (job slow) is already cancelled (by alice at {finished['cancelled_at']})\n",
    )


def test_ctrl_c_on_run_with_on_interrupt_cancel_cancels_the_run(
    jobs_dir: Path, state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USER", "bob")
    _slow(jobs_dir, tmp_path / "child.pid")
    _apply(jobs_dir, state)
    runner = _agentjobs(state, "run", "slow", "--on-interrupt", "cancel")
    try:
        started = _running(state)
        os.kill(runner.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
        _, err = runner.communicate(timeout=20)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130, err
    assert "slow: cancelled (cancelled by bob: Ctrl-C on agentjobs run) in " in err
    [finished] = state.records("attempt_finished")
    assert (finished["outcome"], finished["next"], finished["by"]) == ("cancelled", "done", "bob")
    assert _group_gone(started["child_pid"])
    assert state.queue() == [] and state.dead_letters() == []


def test_ctrl_c_on_run_without_a_terminal_leaves_the_run_to_be_retried_as_before(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    # files only: what a Ctrl-C decides is the CLI's; the state's part is in the test above
    state = State.files(state_dir)
    _slow(jobs_dir, tmp_path / "child.pid")
    _apply(jobs_dir, state)
    runner = _agentjobs(state, "run", "slow")  # stdin is not a terminal: nothing to ask
    try:
        _running(state)
        os.kill(runner.pid, signal.SIGINT)
        _, err = runner.communicate(timeout=20)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130, err
    assert "next attempt at " in err
    [finished] = state.records("attempt_finished")
    assert (finished["outcome"], finished["next"]) == ("interrupted", "retry")
    assert "by" not in finished
    [retry] = state.queue()
    assert (retry.state, retry.attempt) == ("queued", 2)


def test_ctrl_c_on_a_terminal_asks_and_c_cancels_the_run(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    # files only, as above; the terminal is a pseudo-terminal the test types into
    import pty

    state = State.files(state_dir)
    _slow(jobs_dir, tmp_path / "child.pid")
    _apply(jobs_dir, state)
    master, slave = pty.openpty()
    errors = tmp_path / "stderr"
    with open(errors, "w") as err_file:
        runner = _agentjobs(state, "run", "slow", stdin=slave, stderr=err_file)
    os.close(slave)
    try:
        _running(state)
        os.kill(runner.pid, signal.SIGINT)
        question = "cancel the run, or leave it to be retried? [c/R] "
        wait_for(lambda: question in errors.read_text())
        assert state.queue()[0].state == "running"  # nothing is stopped while it asks
        os.write(master, b"c\n")
        runner.communicate(timeout=20)
    finally:
        os.close(master)
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130, errors.read_text()
    [finished] = state.records("attempt_finished")
    assert (finished["outcome"], finished["next"]) == ("cancelled", "done")
    assert state.queue() == []
