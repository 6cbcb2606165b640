"""The engine end to end: real job processes, real locks, time driven by --now; each test once on
the file backend and once on PostgreSQL (the `state` fixture), unless it says why not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import REPO, State, run_agentjobs, wait_for, write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"
T0 = "2026-11-23T12:00:00Z"


def job(*actions: str, **fields: Any) -> str:
    """A job file whose command runs tests/fake_agent.py with `actions`."""
    doc: dict[str, Any] = {"command": [sys.executable, FAKE, *actions]}
    doc.update(fields)
    return json.dumps(doc)  # JSON is YAML


def test_tick_runs_due_jobs_and_every_record_matches_the_schema(
    ajs, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "hello.yaml", job("print", "hello", schedule={"every": "1h"}))
    write(jobs_dir / "later.yaml", job("print", "x", schedule={"cron": "0 2 * * *"}))
    assert ajs("apply", "--now", T0).code == 0
    result = ajs("tick", "--now", T0)
    assert result.code == 0, result.err
    assert result.out.startswith("hello: attempt 1 succeeded in ")
    finished = state.records("attempt_finished")
    assert [(r["job"], r["outcome"], r["trigger"], r["exit_code"]) for r in finished] == [
        ("hello", "succeeded", "schedule", 0)
    ]
    assert finished[0]["output_tail"] == "hello\n"
    assert Path(finished[0]["log_path"]).read_text() == "hello\n"
    schema = json.loads((REPO / "schema" / "run-record.schema.json").read_text())
    for record in state.records():
        jsonschema.validate(record, schema)
    # nothing more is due: the next tick does nothing
    again = ajs("tick", "--now", "2026-11-23T12:30:00Z")
    assert (again.code, again.out) == (0, "")
    assert len(state.records("attempt_finished")) == 1
    status = ajs("-o", "json", "status")
    row = json.loads(status.out)[0]
    assert (row["job"], row["result"]) == ("hello", "succeeded")


def test_priority_orders_the_queue_but_never_bypasses_a_lock(
    ajs, jobs_dir: Path, tmp_path: Path, state: State
) -> None:
    order = tmp_path / "order"
    for name, priority in (
        ("c-low", "low"),
        ("b-normal", "normal"),
        ("a-high", "high"),
        ("d-normal", "normal"),
    ):
        write(
            jobs_dir / f"{name}.yaml",
            job(
                "append",
                str(order),
                name,
                schedule={"every": "1h"},
                priority=priority,
                lock="shared",
            ),
        )
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).code == 0
    # high first, then normal in FIFO (same enqueue time: by id), then low; one at a time
    assert order.read_text().split() == ["a-high", "b-normal", "d-normal", "c-low"]
    starts = state.records("attempt_started")
    ends = state.records("attempt_finished")
    for earlier, later in zip(ends, starts[1:], strict=False):
        assert earlier["finished_at"] <= later["started_at"]


def test_retry_backoff_is_persisted_and_follows_the_injected_clock(
    ajs, jobs_dir: Path, state: State
) -> None:
    write(
        jobs_dir / "flaky.yaml",
        job(
            "print",
            "boom",
            "exit",
            "1",
            schedule={"every": "1d"},
            retry={"attempts": 3, "backoff": {"initial": "10m", "max": "1h", "jitter": "0s"}},
        ),
    )
    assert ajs("apply", "--now", T0).code == 0
    first = ajs("tick", "--now", T0)
    assert first.code == 1
    assert (
        "flaky: run " in first.err
        and "attempt 1 failed (exit code 1); next attempt at "
        "2026-11-23T12:10:00+00:00 (attempt 1 of 3 failed)"
        in first.err
    )
    assert ajs("tick", "--now", "2026-11-23T12:09:00Z").out == ""  # still backing off
    second = ajs("tick", "--now", "2026-11-23T12:10:01Z")
    assert "attempt 2 failed" in second.out
    assert "next attempt at 2026-11-23T12:30:01+00:00" in second.err  # 20 minutes: doubled
    third = ajs("tick", "--now", "2026-11-23T12:31:00Z")
    assert "attempt 3 failed" in third.out
    assert "dead-lettered after attempt 3 (3 of 3 attempts used)" in third.err
    finished = state.records("attempt_finished")
    assert [(r["attempt"], r["trigger"], r["next"]) for r in finished] == [
        (1, "schedule", "retry"),
        (2, "retry", "retry"),
        (3, "retry", "dead_letter"),
    ]
    assert len({r["run_id"] for r in finished}) == 1
    dead = json.loads(ajs("-o", "json", "dlq", "list").out)
    assert len(dead) == 1 and dead[0]["job"] == "flaky" and len(dead[0]["attempts"]) == 3
    assert dead[0]["spec"]["name"] == "flaky"
    assert state.queue() == []


def test_never_on_sends_a_permanent_failure_straight_to_the_dlq(
    ajs, jobs_dir: Path, state: State
) -> None:
    write(
        jobs_dir / "auth.yaml",
        job(
            "print",
            "error: credit balance is too low",
            "exit",
            "1",
            schedule={"every": "1d"},
            retry={"attempts": 5, "never_on": [{"output": "credit balance"}]},
        ),
    )
    assert ajs("apply", "--now", T0).code == 0
    result = ajs("tick", "--now", T0)
    assert result.code == 1
    assert (
        "dead-lettered after attempt 1 (permanent failure (never_on output /credit "
        "balance/))" in result.err
    )
    assert len(state.records("dead_lettered")) == 1


def test_replay_and_resolve(ajs, jobs_dir: Path, state: State, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    write(
        jobs_dir / "fix.yaml",
        job("fail-until", "2", str(counter), "print", "fixed", schedule={"every": "1d"}),
    )
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).code == 1  # attempts: 1 -> dead letter
    entry = json.loads(ajs("-o", "json", "dlq", "list").out)[0]
    shown = ajs("dlq", "show", entry["id"])
    assert "reason: 1 of 1 attempts used" in shown.out
    assert "    | failing on call 1" in shown.out
    replay = ajs("dlq", "replay", entry["id"])
    assert replay.code == 0 and "the next tick runs it" in replay.out
    assert ajs("tick").code == 0  # the replay was enqueued in real time
    finished = state.records("attempt_finished")
    assert [(r["trigger"], r["outcome"]) for r in finished] == [
        ("schedule", "failed"),
        ("replay", "succeeded"),
    ]
    assert finished[1]["replay_of"] == entry["id"]
    after = json.loads(ajs("-o", "json", "dlq", "show", entry["id"]).out)
    assert after["status"] == "replayed"
    assert after["replays"][0]["run_id"] == finished[1]["run_id"]
    assert ajs("dlq", "resolve", entry["id"], "--note", "fixed the credentials").code == 0
    assert json.loads(ajs("-o", "json", "dlq", "list").out) == []
    assert (
        json.loads(ajs("-o", "json", "dlq", "list", "--all").out)[0]["note"]
        == "fixed the credentials"
    )
    assert [r["event"] for r in state.records() if r["event"] in ("replayed", "resolved")] == [
        "replayed",
        "resolved",
    ]
    missing = ajs("dlq", "show", "NOPE")
    assert (missing.code, missing.err) == (
        2,
        "agentjobs: error: no dead letter 'NOPE'; see `agentjobs dlq list`\n",
    )


def test_verify_must_pass_for_success(ajs, jobs_dir: Path, state: State) -> None:
    write(
        jobs_dir / "lazy.yaml",
        job(
            "print",
            "did nothing",
            schedule={"every": "1d"},
            verify=[sys.executable, FAKE, "print", "2 tests failed", "exit", "1"],
        ),
    )
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).code == 1
    finished = state.records("attempt_finished")[0]
    assert finished["outcome"] == "verify_failed"
    assert finished["exit_code"] == 0
    assert "failed (exit code 1): 2 tests failed" in finished["error"]
    assert "2 tests failed" in finished["output_tail"]


def test_environment_and_secret_redaction(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "agent.env", "API_TOKEN=s3cr3t-value-123\n")
    write(
        jobs_dir / "env.yaml",
        job(
            "env",
            "API_TOKEN",
            "env",
            "MODE",
            "env",
            "AGENTJOBS_JOB",
            "env",
            "AGENTJOBS_ATTEMPT",
            "env",
            "AGENTJOBS_SLOT",
            "env",
            "AGENTJOBS_RUN_ID",
            schedule={"every": "1d"},
            env={"MODE": "nightly"},
            env_file="agent.env",
            secrets=["API_TOKEN"],
        ),
    )
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).code == 0
    finished = state.records("attempt_finished")[0]
    log = Path(finished["log_path"]).read_text()
    assert log.splitlines()[:5] == [
        "API_TOKEN=***",
        "MODE=nightly",
        "AGENTJOBS_JOB=env",
        "AGENTJOBS_ATTEMPT=1",
        f"AGENTJOBS_SLOT={finished['slot']}",
    ]
    assert f"AGENTJOBS_RUN_ID={finished['run_id']}" in log
    # nowhere: not in this host's files (logs; all of the state on files), not in the state
    exported = ajs("state", "export")
    assert exported.code == 0, exported.err
    files = "".join(p.read_text() for p in state.local_dir.rglob("*") if p.is_file())
    assert "s3cr3t-value-123" not in files + exported.out


def test_every_counts_from_the_end_of_a_long_run(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "slow.yaml", job("sleep", "1.5", schedule={"every": "1h"}))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).code == 0
    slow = state.runtime().jobs["slow"]
    finished = state.records("attempt_finished")[0]["finished_at"]
    assert finished >= "2026-11-23T12:00:01+00:00"
    from datetime import datetime, timedelta

    assert slow.next_due == (datetime.fromisoformat(finished) + timedelta(hours=1)).isoformat()


def test_at_runs_once_and_then_never(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "once.yaml", job("print", "once", schedule={"at": "2026-11-23T12:01:00Z"}))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).out == ""
    assert "once: attempt 1 succeeded" in ajs("tick", "--now", "2026-11-23T12:01:30Z").out
    assert ajs("tick", "--now", "2026-11-24T12:00:00Z").out == ""
    assert len(state.records("attempt_finished")) == 1


@pytest.mark.parametrize(
    ("policy", "runs", "skips"),
    [
        ("skip", [], {"missed": 7}),
        ("once", [("catchup", "2026-11-30T02:00:00+00:00")], {"coalesced": 6}),
        ("all", [("catchup", f"2026-11-{d:02d}T02:00:00+00:00") for d in range(24, 31)], {}),
    ],
)
def test_catchup_after_a_week_of_downtime(
    ajs,
    jobs_dir: Path,
    state: State,
    policy: str,
    runs: list[tuple[str, str]],
    skips: dict[str, int],
) -> None:
    write(
        jobs_dir / "nightly.yaml",
        job("print", "x", schedule={"cron": "0 2 * * *", "catchup": policy}),
    )
    assert ajs("apply", "--now", T0).code == 0
    # down for a week: the next tick comes at 2026-11-30 09:00, seven 02:00 slots later
    assert ajs("tick", "--now", "2026-11-30T09:00:00Z").code == 0
    finished = state.records("attempt_finished")
    assert [(r["trigger"], r["slot"]) for r in finished] == runs
    skipped: dict[str, int] = {}
    slots = [r["slot"] for r in finished]
    for r in state.records("slot_skipped"):  # one record per job per tick, with a count
        skipped[r["reason"]] = skipped.get(r["reason"], 0) + r["count"]
        first, last = int(r["first"][8:10]), int(r["last"][8:10])
        slots += [f"2026-11-{d:02d}T02:00:00+00:00" for d in range(first, last + 1)]
    assert skipped == skips
    assert len(state.records("slot_skipped")) == (1 if skips else 0)
    # every slot has exactly one terminal record
    assert sorted(slots) == [f"2026-11-{d:02d}T02:00:00+00:00" for d in range(24, 31)]
    # and the next tick does not fire any of them again
    assert ajs("tick", "--now", "2026-11-30T09:05:00Z").out == ""


def test_needs_runs_after_the_needed_job_succeeds(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "build.yaml", job("print", "built", schedule={"every": "1d"}))
    write(jobs_dir / "publish.yaml", job("print", "published", needs=["build"]))
    assert ajs("apply", "--now", T0).code == 0
    result = ajs("tick", "--now", T0)
    assert result.code == 0
    assert [(r["job"], r["trigger"]) for r in state.records("attempt_finished")] == [
        ("build", "schedule"),
        ("publish", "needs"),
    ]
    assert ajs("tick", "--now", "2026-11-23T13:00:00Z").out == ""  # not again until build runs


def test_pause_and_resume(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "p.yaml", job("print", "x", schedule={"cron": "0 * * * *"}))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("pause", "p").out == "p: paused\n"
    assert "(paused)" in ajs("status").out
    assert ajs("tick", "--now", "2026-11-23T15:00:00Z").out == ""
    assert ajs("resume", "p").code == 0
    # resumed from now: the paused hours are not caught up
    assert ajs("tick", "--now", "2026-11-23T15:00:00Z").out == ""
    assert state.records() == []
    assert ajs("pause", "nope").code == 2


# files only: a torn line is what a crash mid-append leaves in a JSONL day file; a PostgreSQL
# record is a row, inserted whole or not at all
def test_a_torn_last_record_line_is_skipped_with_a_warning(
    aj, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "a.yaml", job("print", "x", schedule={"every": "1d"}))
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 0
    day = next((state_dir / "records").glob("*.jsonl"))
    with open(day, "ab") as handle:
        handle.write(b'{"event": "attempt_fin')
    result = aj("-o", "json", "history")
    assert result.code == 0
    assert len(json.loads(result.out)) == 1
    assert f"{day}:3: skipped a damaged record line" in result.err


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _spawn(location: str, *args: str) -> subprocess.Popen[str]:
    """`agentjobs --state-dir LOCATION ARGS` in the background, in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", location, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_run_with_a_busy_key_says_who_holds_it_and_leaves_the_run_queued(
    ajs, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "long.yaml", job("print", "working", "sleep", "3", lock="repo"))
    write(jobs_dir / "other.yaml", job("print", "other", lock="repo"))
    assert ajs("apply").code == 0
    holder = _spawn(state.location, "run", "long")
    try:
        wait_for(lambda: state.queue("running"))
        started = time.monotonic()
        result = ajs("run", "other")
        assert time.monotonic() - started < 2
        assert result.code == 0
        assert "other: not started: lock key repo is held by run " in result.err
        # with a shared state, which host holds it too
        host = f"host {os.uname().nodename}, " if state.shared else ""
        assert f"(job long, attempt 1, {host}started " in result.err
        assert "stays queued for a later tick" in result.err
    finally:
        out, err = holder.communicate(timeout=20)
    assert holder.returncode == 0, err
    assert out == "working\n"  # run streams the job's output
    assert "long: succeeded in " in err
    assert "other: attempt 1 succeeded" in ajs("tick").out


def test_overlap_skip_and_queue(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "skip.yaml", job("sleep", "4", schedule={"cron": "* * * * *"}, lock="a"))
    write(
        jobs_dir / "queue.yaml",
        job("sleep", "4", schedule={"cron": "* * * * *"}, lock="b", overlap="queue"),
    )
    assert ajs("apply", "--now", "2026-11-23T11:59:50Z").code == 0
    first = _spawn(state.location, "tick", "--now", "2026-11-23T12:00:05Z")
    try:
        wait_for(lambda: len(state.queue("running")) == 2)
        # the 12:01 and 12:02 slots come while both 12:00 runs still run
        assert ajs("tick", "--now", "2026-11-23T12:01:05Z").code == 0
        assert ajs("tick", "--now", "2026-11-23T12:02:05Z").code == 0
        skipped = [(r["job"], r["slot"][11:16], r["reason"]) for r in state.records("slot_skipped")]
        assert skipped == [
            ("skip", "12:01", "overlap"),
            ("queue", "12:02", "overlap"),
            ("skip", "12:02", "overlap"),
        ]
        queued = [(i.job, (i.slot or "")[11:16]) for i in state.queue("queued")]
        assert queued == [("queue", "12:01")]  # queue keeps at most one pending slot
    finally:
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_sigterm_records_interrupted_and_the_run_resumes_next_tick(
    jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    write(
        jobs_dir / "long.yaml",
        job(
            "fail-until",
            "0",
            str(counter),
            "print",
            "started",
            "sleep",
            "30",
            schedule={"every": "1d"},
            retry={"attempts": 1},
        ),
    )
    assert (
        run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", state.location, "apply"
        ).returncode
        == 0
    )
    tick = _spawn(state.location, "tick")
    wait_for(lambda: counter.exists())
    started = time.monotonic()
    tick.send_signal(signal.SIGTERM)
    _, err = tick.communicate(timeout=20)
    assert tick.returncode == 143, err
    assert time.monotonic() - started < 15  # TERM to the group, grace, done
    finished = state.records("attempt_finished")
    assert [(r["outcome"], r["next"]) for r in finished] == [("interrupted", "retry")]
    [item] = state.queue()
    assert (item.state, item.attempt, item.failures) == ("queued", 2, 0)
    # the interrupted run goes on at the next tick, without having used up its one attempt
    write(
        jobs_dir / "long.yaml",
        job("print", "quick now", schedule={"every": "1d"}, retry={"attempts": 1}),
    )
    assert (
        run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", state.location, "apply"
        ).returncode
        == 0
    )
    again = run_agentjobs("--state-dir", state.location, "tick")
    assert again.returncode == 0, again.stderr
    assert "long: attempt 2 succeeded" in again.stdout


def test_kill_9_of_a_tick_and_its_supervisor_is_recovered_as_lost_and_retried(
    jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    # PostgreSQL: a lease that a dead holder keeps for 3 s rather than the default 30 s
    write(jobs_dir / "agentjobs.yaml", "lease: 3s\n")
    write(
        jobs_dir / "victim.yaml",
        job(
            "append",
            str(marker),
            "go",
            "sleep",
            "30",
            schedule={"every": "1d"},
            retry={"attempts": 2, "backoff": {"initial": "1h", "max": "1h", "jitter": "0s"}},
        ),
    )
    assert (
        run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", state.location, "apply"
        ).returncode
        == 0
    )
    tick = _spawn(state.location, "tick")
    # the child runs (its marker) and its start is recorded (on a loaded machine the record
    # can follow the marker by a moment)
    wait_for(lambda: marker.exists() and state.records("attempt_started"))
    os.kill(tick.pid, signal.SIGKILL)  # the runner dies; the job it started does not
    tick.communicate(timeout=10)
    child = state.records("attempt_started")[0]["child_pid"]
    # The orphaned job still holds the lock key (its flock; on PostgreSQL its supervisor renews
    # the lease): no tick may start a second one beside it.
    meanwhile = run_agentjobs("--state-dir", state.location, "tick")
    assert (meanwhile.returncode, meanwhile.stdout, meanwhile.stderr) == (0, "", "")
    assert state.records("attempt_finished") == []
    # now the machine "reboots": the attempt's supervisor and its job are gone too
    supervisor = state.records("attempt_started")[0]["supervisor"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    os.killpg(child, signal.SIGKILL)
    wait_for(lambda: _dead(child) and _dead(supervisor))
    wait_for(lambda: state.held() == [])  # PostgreSQL: until the lease expires
    recovered = run_agentjobs("--state-dir", state.location, "tick")
    assert "victim: run " in recovered.stderr and "attempt 1 was lost" in recovered.stderr
    finished = state.records("attempt_finished")
    assert [(r["attempt"], r["outcome"], r["next"]) for r in finished] == [(1, "lost", "retry")]
    assert finished[0]["error"] == (
        "the runner stopped before the attempt finished (killed or machine restarted)"
    )
    [item] = state.queue()
    assert (item.state, item.attempt, item.failures) == ("queued", 2, 1)
    assert state.held() == []  # nothing stays held


def test_run_now_exit_codes_and_the_retry_message(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "ok.yaml", job("print", "fine"))
    write(
        jobs_dir / "bad.yaml",
        job(
            "print",
            "broken",
            "exit",
            "4",
            retry={"attempts": 2, "backoff": {"initial": "5m", "jitter": "0s"}},
        ),
    )
    assert ajs("apply").code == 0
    ok = ajs("run", "ok")
    assert ok.code == 0
    assert ok.out == "fine\n"
    bad = ajs("run", "bad")
    assert bad.code == 1
    assert "bad: failed (exit code 4) in " in bad.err
    assert "bad: next attempt at " in bad.err and "; a later tick runs it" in bad.err
    assert [r["trigger"] for r in state.records("attempt_finished")] == ["manual", "manual"]
    missing = ajs("run", "nope")
    assert missing.code == 2
    assert missing.err == (
        "agentjobs: error: no applied job named 'nope' (jobs: bad, ok); run "
        "`agentjobs apply` first\n"
    )


def test_history_filters_and_logs(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "a.yaml", job("print", "from a"))
    write(jobs_dir / "b.yaml", job("print", "from b", "exit", "1"))
    assert ajs("apply").code == 0
    assert ajs("run", "a").code == 0
    assert ajs("run", "b").code == 1
    rows = json.loads(ajs("-o", "json", "history", "b").out)
    assert [(r["job"], r["outcome"]) for r in rows] == [("b", "failed")]
    failed = json.loads(ajs("-o", "json", "history", "--outcome", "succeeded").out)
    assert [r["job"] for r in failed] == ["a"]
    assert json.loads(ajs("-o", "json", "history", "--limit", "1").out)[0]["job"] == "b"
    assert json.loads(ajs("-o", "json", "history", "--since", "1h").out) != []
    table = ajs("history").out.splitlines()
    assert table[0].split() == [
        "TIME",
        "JOB",
        "RUN",
        "ATTEMPT",
        "TRIGGER",
        "OUTCOME",
        "DURATION",
        "COST",
        "TURNS",
        "DETAIL",
    ]
    run_id = rows[0]["run_id"]
    assert ajs("logs", run_id).out == "from b\n"
    assert ajs("logs", run_id, "--follow").out == "from b\n"  # not running: prints and ends
    assert ajs("logs", "01ZZZZZZZZZZZZZZZZZZZZZZZZ").code == 2


def _check_records(state: State) -> None:
    schema = json.loads((REPO / "schema" / "run-record.schema.json").read_text())
    for record in state.records():
        jsonschema.validate(record, schema)


def test_every_kind_of_record_matches_the_schema(
    ajs, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    write(
        jobs_dir / "flaky.yaml",
        job(
            "fail-until",
            "3",
            str(counter),
            "print",
            "ok",
            schedule={"cron": "0 * * * *", "catchup": "once"},
            secrets=["HOME"],
            retry={"attempts": 2, "backoff": {"initial": "1s", "jitter": "0s"}},
        ),
    )
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", "2026-11-23T15:00:00Z").code == 1  # catch-up + coalesced skips
    assert ajs("tick", "--now", "2026-11-23T15:00:30Z").code == 1  # retry -> dead letter
    entry = json.loads(ajs("-o", "json", "dlq", "list").out)[0]
    assert ajs("dlq", "replay", entry["id"]).code == 0
    assert ajs("tick").code == 0
    assert ajs("dlq", "resolve", entry["id"], "--note", "done").code == 0
    events = {r["event"] for r in state.records()}
    assert events == {
        "attempt_started",
        "attempt_finished",
        "slot_skipped",
        "dead_lettered",
        "replayed",
        "resolved",
    }
    _check_records(state)


def test_a_scheduled_job_with_unmet_needs_skips_its_slot(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "build.yaml", job("exit", "1", retry={"attempts": 1}))
    write(
        jobs_dir / "deploy.yaml",
        job("print", "deploying", needs=["build"], schedule={"cron": "0 * * * *"}),
    )
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", "2026-11-23T13:00:10Z").out == ""
    skipped = state.records("slot_skipped")
    assert [(r["job"], r["reason"]) for r in skipped] == [("deploy", "needs")]
    _check_records(state)


def test_disabled_jobs_get_no_slots(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "off.yaml", job("print", "x", schedule={"every": "1m"}, enabled=False))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", "2026-11-23T13:00:00Z").out == ""
    assert state.records() == []
    assert "(disabled)" in ajs("status").out
    # re-enabled: scheduled from the apply on, not caught up
    write(jobs_dir / "off.yaml", job("print", "x", schedule={"every": "1m"}))
    assert ajs("apply", "--now", "2026-11-23T14:00:00Z").code == 0
    assert "off: attempt 1 succeeded" in ajs("tick", "--now", "2026-11-23T14:00:00Z").out


def test_run_wait_waits_for_the_lock_key(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "long.yaml", job("sleep", "2", lock="repo"))
    write(jobs_dir / "next.yaml", job("print", "after it", lock="repo"))
    assert ajs("apply").code == 0
    holder = _spawn(state.location, "run", "long")
    try:
        wait_for(lambda: state.queue("running"))
        waited = ajs("run", "next", "--wait")
        assert waited.code == 0
        assert waited.out == "after it\n"
    finally:
        holder.communicate(timeout=20)
    starts = {r["job"]: r["started_at"] for r in state.records("attempt_started")}
    ends = {r["job"]: r["finished_at"] for r in state.records("attempt_finished")}
    assert ends["long"] <= starts["next"]


def test_runs_on_needs_every_label(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "g.yaml", job("print", "x", schedule={"every": "1h"}, runs_on=["gpu"]))
    write(jobs_dir / "p.yaml", job("print", "y", schedule={"every": "1h"}))
    assert ajs("apply", "--now", T0).code == 0
    later = "2026-11-23T13:00:01Z"
    first = ajs("tick", "--now", later, "--labels", "linux")
    assert first.out.startswith("p: attempt 1 succeeded") and "g:" not in first.out
    assert [i.job for i in state.queue()] == ["g"]  # left queued
    second = ajs("tick", "--now", later, "--labels", "linux,gpu", "--host", "box")
    assert second.out.startswith("g: attempt 1 succeeded")
    assert state.queue() == []
    assert [r["host"] for r in state.records("attempt_finished")][-1] == "box"


def test_a_leased_finish_is_retried_through_an_outage_but_never_on_a_real_error() -> None:
    from agentjobs.errors import StateUnavailableError, UserError
    from agentjobs.supervised import retry_while_leased as _retry_while_leased

    def failing_once(error: Exception) -> Any:
        calls: list[int] = []

        def step() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise error
            return "recorded"

        return step, calls

    said: list[str] = []
    step, calls = failing_once(StateUnavailableError("lost the database"))
    assert _retry_while_leased(step, 10.0, said.append) == "recorded" and len(calls) == 2
    assert said == ["cannot record the attempt yet (lost the database); retrying"]
    step, calls = failing_once(UserError("no such job"))
    with pytest.raises(UserError, match="no such job"):
        _retry_while_leased(step, 10.0, said.append)
    assert len(calls) == 1 and len(said) == 1  # not tried again: waiting would not fix it
