"""The engine end to end: real job processes, real files, real locks, time driven by --now."""

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

from tests.conftest import REPO, run_agentjobs, wait_for, write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"
T0 = "2026-11-23T12:00:00Z"


def job(*actions: str, **fields: Any) -> str:
    """A job file whose command runs tests/fake_agent.py with `actions`."""
    doc: dict[str, Any] = {"command": [sys.executable, FAKE, *actions]}
    doc.update(fields)
    return json.dumps(doc)  # JSON is YAML


def records(state_dir: Path, event: str | None = None) -> list[dict[str, Any]]:
    out = []
    for path in sorted((state_dir / "records").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if event is None or r["event"] == event]


def runtime(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "runtime.json").read_text())


def test_tick_runs_due_jobs_and_every_record_matches_the_schema(
    aj, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "hello.yaml", job("print", "hello", schedule={"every": "1h"}))
    write(jobs_dir / "later.yaml", job("print", "x", schedule={"cron": "0 2 * * *"}))
    assert aj("apply", "--now", T0).code == 0
    result = aj("tick", "--now", T0)
    assert result.code == 0, result.err
    assert result.out.startswith("hello: attempt 1 succeeded in ")
    finished = records(state_dir, "attempt_finished")
    assert [(r["job"], r["outcome"], r["trigger"], r["exit_code"]) for r in finished] == [
        ("hello", "succeeded", "schedule", 0)
    ]
    assert finished[0]["output_tail"] == "hello\n"
    assert Path(finished[0]["log_path"]).read_text() == "hello\n"
    schema = json.loads((REPO / "schema" / "run-record.schema.json").read_text())
    for record in records(state_dir):
        jsonschema.validate(record, schema)
    # nothing more is due: the next tick does nothing
    again = aj("tick", "--now", "2026-11-23T12:30:00Z")
    assert (again.code, again.out) == (0, "")
    assert len(records(state_dir, "attempt_finished")) == 1
    status = aj("-o", "json", "status")
    row = json.loads(status.out)[0]
    assert (row["job"], row["result"]) == ("hello", "succeeded")


def test_priority_orders_the_queue_but_never_bypasses_a_lock(
    aj, jobs_dir: Path, tmp_path: Path, state_dir: Path
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
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 0
    # high first, then normal in FIFO (same enqueue time: by id), then low; one at a time
    assert order.read_text().split() == ["a-high", "b-normal", "d-normal", "c-low"]
    starts = records(state_dir, "attempt_started")
    ends = records(state_dir, "attempt_finished")
    for earlier, later in zip(ends, starts[1:], strict=False):
        assert earlier["finished_at"] <= later["started_at"]


def test_retry_backoff_is_persisted_and_follows_the_injected_clock(
    aj, jobs_dir: Path, state_dir: Path
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
    assert aj("apply", "--now", T0).code == 0
    first = aj("tick", "--now", T0)
    assert first.code == 1
    assert (
        "flaky: run " in first.err
        and "attempt 1 failed (exit code 1); next attempt at "
        "2026-11-23T12:10:00+00:00 (attempt 1 of 3 failed)"
        in first.err
    )
    assert aj("tick", "--now", "2026-11-23T12:09:00Z").out == ""  # still backing off
    second = aj("tick", "--now", "2026-11-23T12:10:01Z")
    assert "attempt 2 failed" in second.out
    assert "next attempt at 2026-11-23T12:30:01+00:00" in second.err  # 20 minutes: doubled
    third = aj("tick", "--now", "2026-11-23T12:31:00Z")
    assert "attempt 3 failed" in third.out
    assert "dead-lettered after attempt 3 (3 of 3 attempts used)" in third.err
    finished = records(state_dir, "attempt_finished")
    assert [(r["attempt"], r["trigger"], r["next"]) for r in finished] == [
        (1, "schedule", "retry"),
        (2, "retry", "retry"),
        (3, "retry", "dead_letter"),
    ]
    assert len({r["run_id"] for r in finished}) == 1
    dead = json.loads(aj("-o", "json", "dlq", "list").out)
    assert len(dead) == 1 and dead[0]["job"] == "flaky" and len(dead[0]["attempts"]) == 3
    assert dead[0]["spec"]["name"] == "flaky"
    assert runtime(state_dir)["queue"] == {}


def test_never_on_sends_a_permanent_failure_straight_to_the_dlq(
    aj, jobs_dir: Path, state_dir: Path
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
    assert aj("apply", "--now", T0).code == 0
    result = aj("tick", "--now", T0)
    assert result.code == 1
    assert (
        "dead-lettered after attempt 1 (permanent failure (never_on output /credit "
        "balance/))" in result.err
    )
    assert len(records(state_dir, "dead_lettered")) == 1


def test_replay_and_resolve(aj, jobs_dir: Path, state_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    write(
        jobs_dir / "fix.yaml",
        job("fail-until", "2", str(counter), "print", "fixed", schedule={"every": "1d"}),
    )
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 1  # attempts: 1 -> dead letter
    entry = json.loads(aj("-o", "json", "dlq", "list").out)[0]
    shown = aj("dlq", "show", entry["id"])
    assert "reason: 1 of 1 attempts used" in shown.out
    assert "    | failing on call 1" in shown.out
    replay = aj("dlq", "replay", entry["id"])
    assert replay.code == 0 and "the next tick runs it" in replay.out
    assert aj("tick").code == 0  # the replay was enqueued in real time
    finished = records(state_dir, "attempt_finished")
    assert [(r["trigger"], r["outcome"]) for r in finished] == [
        ("schedule", "failed"),
        ("replay", "succeeded"),
    ]
    assert finished[1]["replay_of"] == entry["id"]
    after = json.loads(aj("-o", "json", "dlq", "show", entry["id"]).out)
    assert after["status"] == "replayed"
    assert after["replays"][0]["run_id"] == finished[1]["run_id"]
    assert aj("dlq", "resolve", entry["id"], "--note", "fixed the credentials").code == 0
    assert json.loads(aj("-o", "json", "dlq", "list").out) == []
    assert (
        json.loads(aj("-o", "json", "dlq", "list", "--all").out)[0]["note"]
        == "fixed the credentials"
    )
    assert [r["event"] for r in records(state_dir) if r["event"] in ("replayed", "resolved")] == [
        "replayed",
        "resolved",
    ]
    missing = aj("dlq", "show", "NOPE")
    assert (missing.code, missing.err) == (
        2,
        "agentjobs: error: no dead letter 'NOPE'; see `agentjobs dlq list`\n",
    )


def test_verify_must_pass_for_success(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(
        jobs_dir / "lazy.yaml",
        job(
            "print",
            "did nothing",
            schedule={"every": "1d"},
            verify=[sys.executable, FAKE, "print", "2 tests failed", "exit", "1"],
        ),
    )
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 1
    finished = records(state_dir, "attempt_finished")[0]
    assert finished["outcome"] == "verify_failed"
    assert finished["exit_code"] == 0
    assert "failed (exit code 1): 2 tests failed" in finished["error"]
    assert "2 tests failed" in finished["output_tail"]


def test_environment_and_secret_redaction(aj, jobs_dir: Path, state_dir: Path) -> None:
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
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 0
    finished = records(state_dir, "attempt_finished")[0]
    log = Path(finished["log_path"]).read_text()
    assert log.splitlines()[:5] == [
        "API_TOKEN=***",
        "MODE=nightly",
        "AGENTJOBS_JOB=env",
        "AGENTJOBS_ATTEMPT=1",
        f"AGENTJOBS_SLOT={finished['slot']}",
    ]
    assert f"AGENTJOBS_RUN_ID={finished['run_id']}" in log
    everything = "".join(p.read_text() for p in state_dir.rglob("*") if p.is_file())
    assert "s3cr3t-value-123" not in everything


def test_every_counts_from_the_end_of_a_long_run(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "slow.yaml", job("sleep", "1.5", schedule={"every": "1h"}))
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 0
    state = runtime(state_dir)["jobs"]["slow"]
    finished = records(state_dir, "attempt_finished")[0]["finished_at"]
    assert finished >= "2026-11-23T12:00:01+00:00"
    from datetime import datetime, timedelta

    assert state["next_due"] == (datetime.fromisoformat(finished) + timedelta(hours=1)).isoformat()


def test_at_runs_once_and_then_never(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "once.yaml", job("print", "once", schedule={"at": "2026-11-23T12:01:00Z"}))
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).out == ""
    assert "once: attempt 1 succeeded" in aj("tick", "--now", "2026-11-23T12:01:30Z").out
    assert aj("tick", "--now", "2026-11-24T12:00:00Z").out == ""
    assert len(records(state_dir, "attempt_finished")) == 1


@pytest.mark.parametrize(
    ("policy", "runs", "skips"),
    [
        ("skip", [], {"missed": 7}),
        ("once", [("catchup", "2026-11-30T02:00:00+00:00")], {"coalesced": 6}),
        ("all", [("catchup", f"2026-11-{d:02d}T02:00:00+00:00") for d in range(24, 31)], {}),
    ],
)
def test_catchup_after_a_week_of_downtime(
    aj,
    jobs_dir: Path,
    state_dir: Path,
    policy: str,
    runs: list[tuple[str, str]],
    skips: dict[str, int],
) -> None:
    write(
        jobs_dir / "nightly.yaml",
        job("print", "x", schedule={"cron": "0 2 * * *", "catchup": policy}),
    )
    assert aj("apply", "--now", T0).code == 0
    # down for a week: the next tick comes at 2026-11-30 09:00, seven 02:00 slots later
    assert aj("tick", "--now", "2026-11-30T09:00:00Z").code == 0
    finished = records(state_dir, "attempt_finished")
    assert [(r["trigger"], r["slot"]) for r in finished] == runs
    skipped: dict[str, int] = {}
    slots = [r["slot"] for r in finished]
    for r in records(state_dir, "slot_skipped"):  # one record per job per tick, with a count
        skipped[r["reason"]] = skipped.get(r["reason"], 0) + r["count"]
        first, last = int(r["first"][8:10]), int(r["last"][8:10])
        slots += [f"2026-11-{d:02d}T02:00:00+00:00" for d in range(first, last + 1)]
    assert skipped == skips
    assert len(records(state_dir, "slot_skipped")) == (1 if skips else 0)
    # every slot has exactly one terminal record
    assert sorted(slots) == [f"2026-11-{d:02d}T02:00:00+00:00" for d in range(24, 31)]
    # and the next tick does not fire any of them again
    assert aj("tick", "--now", "2026-11-30T09:05:00Z").out == ""


def test_needs_runs_after_the_needed_job_succeeds(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "build.yaml", job("print", "built", schedule={"every": "1d"}))
    write(jobs_dir / "publish.yaml", job("print", "published", needs=["build"]))
    assert aj("apply", "--now", T0).code == 0
    result = aj("tick", "--now", T0)
    assert result.code == 0
    assert [(r["job"], r["trigger"]) for r in records(state_dir, "attempt_finished")] == [
        ("build", "schedule"),
        ("publish", "needs"),
    ]
    assert aj("tick", "--now", "2026-11-23T13:00:00Z").out == ""  # not again until build runs


def test_pause_and_resume(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "p.yaml", job("print", "x", schedule={"cron": "0 * * * *"}))
    assert aj("apply", "--now", T0).code == 0
    assert aj("pause", "p").out == "p: paused\n"
    assert "(paused)" in aj("status").out
    assert aj("tick", "--now", "2026-11-23T15:00:00Z").out == ""
    assert aj("resume", "p").code == 0
    # resumed from now: the paused hours are not caught up
    assert aj("tick", "--now", "2026-11-23T15:00:00Z").out == ""
    assert records(state_dir) == []
    assert aj("pause", "nope").code == 2


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


def _running(state_dir: Path) -> bool:
    path = state_dir / "runtime.json"
    return path.exists() and any(
        i["state"] == "running" for i in json.loads(path.read_text())["queue"].values()
    )


def _spawn(state_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_run_with_a_busy_key_says_who_holds_it_and_leaves_the_run_queued(
    aj, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "long.yaml", job("print", "working", "sleep", "3", lock="repo"))
    write(jobs_dir / "other.yaml", job("print", "other", lock="repo"))
    assert aj("apply").code == 0
    holder = _spawn(state_dir, "run", "long")
    try:
        wait_for(lambda: _running(state_dir))
        started = time.monotonic()
        result = aj("run", "other")
        assert time.monotonic() - started < 2
        assert result.code == 0
        assert "other: not started: lock key repo is held by run " in result.err
        assert "(job long, attempt 1, started " in result.err
        assert "stays queued for a later tick" in result.err
    finally:
        out, err = holder.communicate(timeout=20)
    assert holder.returncode == 0, err
    assert out == "working\n"  # run streams the job's output
    assert "long: succeeded in " in err
    assert "other: attempt 1 succeeded" in aj("tick").out


def test_overlap_skip_and_queue(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "skip.yaml", job("sleep", "4", schedule={"cron": "* * * * *"}, lock="a"))
    write(
        jobs_dir / "queue.yaml",
        job("sleep", "4", schedule={"cron": "* * * * *"}, lock="b", overlap="queue"),
    )
    assert aj("apply", "--now", "2026-11-23T11:59:50Z").code == 0
    first = _spawn(state_dir, "tick", "--now", "2026-11-23T12:00:05Z")
    try:
        wait_for(
            lambda: sum(i["state"] == "running" for i in runtime(state_dir)["queue"].values()) == 2
        )
        # the 12:01 and 12:02 slots come while both 12:00 runs still run
        assert aj("tick", "--now", "2026-11-23T12:01:05Z").code == 0
        assert aj("tick", "--now", "2026-11-23T12:02:05Z").code == 0
        skipped = [
            (r["job"], r["slot"][11:16], r["reason"]) for r in records(state_dir, "slot_skipped")
        ]
        assert skipped == [
            ("skip", "12:01", "overlap"),
            ("queue", "12:02", "overlap"),
            ("skip", "12:02", "overlap"),
        ]
        queued = [
            (i["job"], i["slot"][11:16])
            for i in runtime(state_dir)["queue"].values()
            if i["state"] == "queued"
        ]
        assert queued == [("queue", "12:01")]  # queue keeps at most one pending slot
    finally:
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_sigterm_records_interrupted_and_the_run_resumes_next_tick(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
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
            "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply"
        ).returncode
        == 0
    )
    tick = _spawn(state_dir, "tick")
    wait_for(lambda: counter.exists())
    started = time.monotonic()
    tick.send_signal(signal.SIGTERM)
    _, err = tick.communicate(timeout=20)
    assert tick.returncode == 143, err
    assert time.monotonic() - started < 15  # TERM to the group, grace, done
    finished = records(state_dir, "attempt_finished")
    assert [(r["outcome"], r["next"]) for r in finished] == [("interrupted", "retry")]
    item = next(iter(runtime(state_dir)["queue"].values()))
    assert (item["state"], item["attempt"], item["failures"]) == ("queued", 2, 0)
    # the interrupted run goes on at the next tick, without having used up its one attempt
    write(
        jobs_dir / "long.yaml",
        job("print", "quick now", schedule={"every": "1d"}, retry={"attempts": 1}),
    )
    assert (
        run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply"
        ).returncode
        == 0
    )
    again = run_agentjobs("--state-dir", str(state_dir), "tick")
    assert again.returncode == 0, again.stderr
    assert "long: attempt 2 succeeded" in again.stdout


def test_kill_9_of_a_tick_and_its_supervisor_is_recovered_as_lost_and_retried(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
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
            "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply"
        ).returncode
        == 0
    )
    tick = _spawn(state_dir, "tick")
    wait_for(lambda: marker.exists())
    os.kill(tick.pid, signal.SIGKILL)  # the runner dies; the job it started does not
    tick.communicate(timeout=10)
    child = records(state_dir, "attempt_started")[0]["child_pid"]
    # The orphaned job still holds the lock key: no tick may start a second one beside it.
    meanwhile = run_agentjobs("--state-dir", str(state_dir), "tick")
    assert (meanwhile.returncode, meanwhile.stdout, meanwhile.stderr) == (0, "", "")
    assert records(state_dir, "attempt_finished") == []
    # now the machine "reboots": the attempt's supervisor and its job are gone too
    supervisor = records(state_dir, "attempt_started")[0]["supervisor"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    os.killpg(child, signal.SIGKILL)
    wait_for(lambda: _dead(child) and _dead(supervisor))
    recovered = run_agentjobs("--state-dir", str(state_dir), "tick")
    assert "victim: run " in recovered.stderr and "attempt 1 was lost" in recovered.stderr
    finished = records(state_dir, "attempt_finished")
    assert [(r["attempt"], r["outcome"], r["next"]) for r in finished] == [(1, "lost", "retry")]
    assert finished[0]["error"] == (
        "the runner stopped before the attempt finished (killed or machine restarted)"
    )
    item = next(iter(runtime(state_dir)["queue"].values()))
    assert (item["state"], item["attempt"], item["failures"]) == ("queued", 2, 1)
    for lock in (state_dir / "locks").glob("*.lock"):
        import fcntl

        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nothing stays held
        finally:
            os.close(fd)


def test_run_now_exit_codes_and_the_retry_message(aj, jobs_dir: Path, state_dir: Path) -> None:
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
    assert aj("apply").code == 0
    ok = aj("run", "ok")
    assert ok.code == 0
    assert ok.out == "fine\n"
    bad = aj("run", "bad")
    assert bad.code == 1
    assert "bad: failed (exit code 4) in " in bad.err
    assert "bad: next attempt at " in bad.err and "; a later tick runs it" in bad.err
    assert [r["trigger"] for r in records(state_dir, "attempt_finished")] == ["manual", "manual"]
    missing = aj("run", "nope")
    assert missing.code == 2
    assert missing.err == (
        "agentjobs: error: no applied job named 'nope' (jobs: bad, ok); run "
        "`agentjobs apply` first\n"
    )


def test_history_filters_and_logs(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "a.yaml", job("print", "from a"))
    write(jobs_dir / "b.yaml", job("print", "from b", "exit", "1"))
    assert aj("apply").code == 0
    assert aj("run", "a").code == 0
    assert aj("run", "b").code == 1
    rows = json.loads(aj("-o", "json", "history", "b").out)
    assert [(r["job"], r["outcome"]) for r in rows] == [("b", "failed")]
    failed = json.loads(aj("-o", "json", "history", "--outcome", "succeeded").out)
    assert [r["job"] for r in failed] == ["a"]
    assert json.loads(aj("-o", "json", "history", "--limit", "1").out)[0]["job"] == "b"
    assert json.loads(aj("-o", "json", "history", "--since", "1h").out) != []
    table = aj("history").out.splitlines()
    assert table[0].split() == [
        "TIME",
        "JOB",
        "RUN",
        "ATTEMPT",
        "TRIGGER",
        "OUTCOME",
        "DURATION",
        "DETAIL",
    ]
    run_id = rows[0]["run_id"]
    assert aj("logs", run_id).out == "from b\n"
    assert aj("logs", run_id, "--follow").out == "from b\n"  # not running: prints and ends
    assert aj("logs", "01ZZZZZZZZZZZZZZZZZZZZZZZZ").code == 2


def _check_records(state_dir: Path) -> None:
    schema = json.loads((REPO / "schema" / "run-record.schema.json").read_text())
    for record in records(state_dir):
        jsonschema.validate(record, schema)


def test_every_kind_of_record_matches_the_schema(
    aj, jobs_dir: Path, state_dir: Path, tmp_path: Path
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
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", "2026-11-23T15:00:00Z").code == 1  # catch-up + coalesced skips
    assert aj("tick", "--now", "2026-11-23T15:00:30Z").code == 1  # retry -> dead letter
    entry = json.loads(aj("-o", "json", "dlq", "list").out)[0]
    assert aj("dlq", "replay", entry["id"]).code == 0
    assert aj("tick").code == 0
    assert aj("dlq", "resolve", entry["id"], "--note", "done").code == 0
    events = {r["event"] for r in records(state_dir)}
    assert events == {
        "attempt_started",
        "attempt_finished",
        "slot_skipped",
        "dead_lettered",
        "replayed",
        "resolved",
    }
    _check_records(state_dir)


def test_a_scheduled_job_with_unmet_needs_skips_its_slot(
    aj, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "build.yaml", job("exit", "1", retry={"attempts": 1}))
    write(
        jobs_dir / "deploy.yaml",
        job("print", "deploying", needs=["build"], schedule={"cron": "0 * * * *"}),
    )
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", "2026-11-23T13:00:10Z").out == ""
    skipped = records(state_dir, "slot_skipped")
    assert [(r["job"], r["reason"]) for r in skipped] == [("deploy", "needs")]
    _check_records(state_dir)


def test_disabled_jobs_get_no_slots(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "off.yaml", job("print", "x", schedule={"every": "1m"}, enabled=False))
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", "2026-11-23T13:00:00Z").out == ""
    assert records(state_dir) == []
    assert "(disabled)" in aj("status").out
    # re-enabled: scheduled from the apply on, not caught up
    write(jobs_dir / "off.yaml", job("print", "x", schedule={"every": "1m"}))
    assert aj("apply", "--now", "2026-11-23T14:00:00Z").code == 0
    assert "off: attempt 1 succeeded" in aj("tick", "--now", "2026-11-23T14:00:00Z").out


def test_run_wait_waits_for_the_lock_key(aj, jobs_dir: Path, state_dir: Path) -> None:
    write(jobs_dir / "long.yaml", job("sleep", "2", lock="repo"))
    write(jobs_dir / "next.yaml", job("print", "after it", lock="repo"))
    assert aj("apply").code == 0
    holder = _spawn(state_dir, "run", "long")
    try:
        wait_for(lambda: _running(state_dir))
        waited = aj("run", "next", "--wait")
        assert waited.code == 0
        assert waited.out == "after it\n"
    finally:
        holder.communicate(timeout=20)
    starts = {r["job"]: r["started_at"] for r in records(state_dir, "attempt_started")}
    ends = {r["job"]: r["finished_at"] for r in records(state_dir, "attempt_finished")}
    assert ends["long"] <= starts["next"]


def test_runs_on_needs_every_label_on_the_file_backend_too(
    aj, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "g.yaml", job("print", "x", schedule={"every": "1h"}, runs_on=["gpu"]))
    write(jobs_dir / "p.yaml", job("print", "y", schedule={"every": "1h"}))
    assert aj("apply", "--now", T0).code == 0
    later = "2026-11-23T13:00:01Z"
    first = aj("tick", "--now", later, "--labels", "linux")
    assert first.out.startswith("p: attempt 1 succeeded") and "g:" not in first.out
    assert [i["job"] for i in runtime(state_dir)["queue"].values()] == ["g"]  # left queued
    second = aj("tick", "--now", later, "--labels", "linux,gpu", "--host", "box")
    assert second.out.startswith("g: attempt 1 succeeded")
    assert runtime(state_dir)["queue"] == {}
    assert [r["host"] for r in records(state_dir, "attempt_finished")][-1] == "box"


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
