"""The settle step as pure values (issue 11, item 2): from a queue item, what its attempt did,
the job's spec and state, and `now`, to the records and the `Settlement`. No files, no
processes: every rule of how an attempt ends is checked here without I/O."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from agentjobs.clock import iso
from agentjobs.settle import Ended, Recorder, finish_events, finish_records, settle
from agentjobs.spec import AgentSpec, Backoff, JobSpec, RetryPolicy, Schedule
from agentjobs.store import AppliedJob, AttemptSummary, CancelRequest, JobState, QueueItem

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RECORDER = Recorder(host="h1", pid=4242)


def job(**spec: Any) -> AppliedJob:
    values: dict[str, Any] = {
        "name": "fix",
        "workdir": "/repo",
        "lock": "/repo",
        "command": ("true",),
    }
    values.update(spec)
    return AppliedJob(
        "fix", JobSpec(**values).to_dict(), "s1", "h1", "jobs.d/fix.yaml", iso(T0) or ""
    )


def item(**fields: Any) -> QueueItem:
    values: dict[str, Any] = {
        "id": "fix@slot",
        "run_id": "01RUN",
        "job": "fix",
        "trigger": "schedule",
        "priority": "normal",
        "lock_key": "/repo",
        "queued_at": iso(T0) or "",
        "not_before": iso(T0) or "",
        "state": "running",
        "started_at": iso(T0),
    }
    values.update(fields)
    return QueueItem(**values)


def ended(outcome: str, **fields: Any) -> Ended:
    return Ended(outcome=outcome, started_at=iso(T0) or "", log_path="/logs/1.log", **fields)


NOW = T0 + timedelta(minutes=3)
POLICY = RetryPolicy(attempts=3, backoff=Backoff(initial=60, max=600, multiplier=2, jitter=0))


def test_a_success_ends_the_run_and_tells_who_listens() -> None:
    spec = job(notify={"webhook": "http://127.0.0.1:9/h"})
    records = finish_records(item(), spec, ended("succeeded", exit_code=0), NOW, RECORDER)
    assert [r["event"] for r in records] == ["attempt_finished"]
    finished = records[0]
    assert (finished["next"], finished["duration_s"], finished["host"]) == ("done", 180.0, "h1")
    done = settle(item(), spec, JobState(schedule_hash="h1", last_outcome="failed"), finished)
    assert done.result.ok and done.retry is None and done.dead_letter is None
    assert done.events == ("succeeded", "recovered") and done.pings == ("success",)
    assert done.state is not None and done.state.last_success == iso(NOW)


def test_a_failure_with_attempts_left_is_queued_again_after_its_backoff() -> None:
    spec = job(retry=POLICY)
    finished = finish_records(item(), spec, ended("failed", exit_code=1), NOW, RECORDER)[0]
    assert (finished["next"], finished["next_attempt_at"]) == (
        "retry",
        iso(NOW + timedelta(seconds=60)),
    )
    done = settle(item(), spec, None, finished)
    assert done.retry is not None
    assert (done.retry.attempt, done.retry.failures, done.retry.trigger, done.retry.state) == (
        2,
        1,
        "retry",
        "queued",
    )
    assert done.retry.not_before == finished["next_attempt_at"]
    assert [h.outcome for h in done.retry.history] == ["failed"]
    assert done.message is not None and "next attempt at" in done.message
    assert done.state is None  # no job state given, none made up


def test_the_last_attempt_ends_in_the_dead_letter_queue_with_every_attempt() -> None:
    spec = job(retry=POLICY, notify={"webhook": "http://127.0.0.1:9/h"})
    before = AttemptSummary(2, "failed", iso(T0) or "", iso(T0) or "")
    last = item(attempt=3, failures=2, history=(before, before))
    records = finish_records(last, spec, ended("failed", exit_code=1), NOW, RECORDER)
    assert [r["event"] for r in records] == ["attempt_finished", "dead_lettered"]
    done = settle(last, spec, None, records[0])
    assert done.retry is None and done.dead_letter is not None
    assert len(done.dead_letter.attempts) == 3 and done.result.dlq_id == "01RUN"
    assert done.events == ("failed", "dead_lettered") and done.pings == ("fail",)


def test_a_usage_limit_holds_every_job_of_the_account_until_the_reset() -> None:
    spec = job(agent=AgentSpec(kind="claude", prompt="fix it"), retry=POLICY)
    reset = NOW + timedelta(hours=2)
    finished = finish_records(
        item(failures=1),
        spec,
        ended("rate_limited", reset_at=reset),
        NOW,
        RECORDER,
        random.Random(7),
    )[0]
    at = datetime.fromisoformat(finished["next_attempt_at"])
    assert reset <= at <= reset + timedelta(seconds=60)
    done = settle(item(failures=1), spec, None, finished)
    assert done.hold == ("claude", finished["next_attempt_at"])
    assert done.retry is not None and done.retry.failures == 1  # not counted
    assert done.pings == ()


def test_a_permanent_error_and_a_deleted_job_are_never_retried() -> None:
    spec = job(retry=POLICY)
    permanent = finish_records(
        item(), spec, ended("failed", error="bad key", permanent=True), NOW, RECORDER
    )[0]
    assert (permanent["next"], permanent["reason"]) == (
        "dead_letter",
        "a retry cannot fix this: bad key",
    )
    # an interrupted attempt is retried as a rule, but not for a job that is gone
    deleted = finish_records(item(), None, ended("interrupted"), NOW, RECORDER)
    assert deleted[0]["reason"] == "the job was deleted" and len(deleted) == 2


def test_an_every_job_counts_its_next_run_from_the_end_of_this_one() -> None:
    spec = job(schedule=Schedule(every=600))
    finished = finish_records(item(), spec, ended("succeeded", exit_code=0), NOW, RECORDER)[0]
    done = settle(item(), spec, JobState(schedule_hash="h1"), finished)
    assert done.state is not None and done.state.next_due is not None
    assert datetime.fromisoformat(done.state.next_due) >= NOW + timedelta(seconds=600)


def test_an_interrupted_attempt_tells_nobody_and_uses_up_nothing() -> None:
    assert finish_events("interrupted", "succeeded", None) == ((), ())
    finished = finish_records(item(), job(retry=POLICY), ended("interrupted"), NOW, RECORDER)[0]
    done = settle(item(), job(retry=POLICY), None, finished)
    assert done.retry is not None and done.retry.failures == 0 and done.retry.not_before == iso(NOW)


def test_a_cancelled_attempt_ends_the_run_quietly_never_retried_nor_dead_lettered() -> None:
    # a person's decision (issue 13): attempts left or not, no retry, no dead letter, no alarm
    spec = job(retry=POLICY, notify={"webhook": "http://127.0.0.1:9/h"})
    cancel = CancelRequest("alice", iso(NOW) or "", "wrong branch")
    last = item(attempt=3, failures=2)
    for attempt in (item(), last):
        records = finish_records(
            attempt, spec, ended("cancelled", error="cancelled", cancel=cancel), NOW, RECORDER
        )
        assert [r["event"] for r in records] == ["attempt_finished"]
        finished = records[0]
        assert (finished["next"], finished["by"], finished["cancelled_at"]) == (
            "done",
            "alice",
            iso(NOW),
        )
        done = settle(attempt, spec, JobState(schedule_hash="h1"), finished)
        assert done.retry is None and done.dead_letter is None and done.cancelled is None
        assert (done.events, done.pings) == ((), ())
        assert done.state is not None and done.state.last_outcome == "cancelled"


def test_a_cancel_as_the_attempt_fails_by_itself_ends_the_run_instead_of_a_retry() -> None:
    # the supervisor had not looked yet: its record says retry, the cancel on the item wins
    spec = job(retry=POLICY)
    finished = finish_records(item(), spec, ended("failed", exit_code=1), NOW, RECORDER)[0]
    assert finished["next"] == "retry"
    cancelled = item(cancel_by="alice", cancel_at=iso(NOW), cancel_reason="stop it")
    done = settle(cancelled, spec, JobState(schedule_hash="h1"), finished)
    assert done.retry is None and done.dead_letter is None
    assert done.cancelled is not None and done.cancelled.attempt == 2  # recorded `cancelled`
    assert (done.result.outcome, done.result.next) == ("failed", "done")
    assert done.message is not None and "not retried: cancelled by alice" in done.message
