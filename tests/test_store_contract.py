"""The Store protocol's contract (STYLE.md rule 9): one suite, run unchanged against every
backend: the file backend and the PostgreSQL backend (a real server, tests/pgserver.py)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentjobs.errors import UserError
from agentjobs.store import (
    AppliedChange,
    AppliedJob,
    CancelRequest,
    Claim,
    ClaimRequest,
    JobState,
    OutboxEvent,
    QueueItem,
    QueueState,
    Refusal,
    Runtime,
    Store,
)


@pytest.fixture(params=["files", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    from agentjobs.store import open_store

    if request.param == "files":
        yield open_store(str(tmp_path / "state"))
        return
    from agentjobs.store.postgres import PostgresStore

    url = request.getfixturevalue("pg_url")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("AGENTJOBS_LOCAL_DIR", str(tmp_path / "local"))  # open_store(describe())
    pg = PostgresStore(url, tmp_path / "local")
    yield pg
    pg.close()


def _job(name: str, lock: str = "k") -> AppliedJob:
    return AppliedJob(
        name,
        {"name": name, "lock": lock},
        f"h-{name}",
        f"s-{name}",
        f"{name}.yaml",
        "2026-11-23T12:00:00+00:00",
        "abc123",
    )


def _item(i: int) -> QueueItem:
    return QueueItem(
        id=f"a@{i}",
        run_id=f"R{i:025d}",
        job="a",
        trigger="schedule",
        priority="normal",
        lock_key="k",
        queued_at="2026-11-23T12:00:00+00:00",
        not_before="2026-11-23T12:00:00+00:00",
    )


def test_an_empty_store_reads_as_empty(store: Store) -> None:
    assert not store.exists()
    assert (store.applied(), store.config(), store.dead_letters()) == ({}, {}, [])
    runtime = store.runtime()
    assert (runtime.jobs, runtime.queue, runtime.holds) == ({}, {}, {})
    assert list(store.records()) == []
    assert store.counters() == {}


def test_apply_writes_jobs_config_and_states_together(store: Store) -> None:
    version = store.applied_version()
    with store.transaction(5) as runtime:
        runtime.jobs["a"] = JobState("s-a", next_due="2026-11-24T02:00:00+00:00", needs=("b",))
        runtime.queue["a@1"] = _item(1)
        runtime.holds["claude"] = "2026-11-23T13:00:00+00:00"
        store.write_applied(
            AppliedChange(put={"a": _job("a"), "b": _job("b")}, config={"max_concurrent": 3})
        )
        runtime.applied_version = store.applied_version()
    assert store.exists()
    assert store.applied() == {"a": _job("a"), "b": _job("b")}
    assert store.config() == {"max_concurrent": 3}
    assert store.applied_version() != version
    runtime = store.runtime()
    assert runtime.jobs["a"].needs == ("b",)
    assert runtime.queue == {"a@1": _item(1)}
    assert runtime.holds == {"claude": "2026-11-23T13:00:00+00:00"}
    assert runtime.applied_version == store.applied_version()
    with store.transaction(5):
        store.write_applied(AppliedChange(put={}, remove=("b",)))
    assert set(store.applied()) == {"a"} and store.config() == {"max_concurrent": 3}


def test_a_failed_transaction_changes_nothing(store: Store) -> None:
    with store.transaction(5) as runtime:
        runtime.queue["a@1"] = _item(1)
    with pytest.raises(RuntimeError), store.transaction(5) as runtime:
        runtime.queue["a@2"] = _item(2)
        del runtime.queue["a@1"]
        raise RuntimeError("crash")
    assert set(store.runtime().queue) == {"a@1"}


def test_snapshots_are_copies(store: Store) -> None:
    with store.transaction(5) as runtime:
        runtime.queue["a@1"] = _item(1)
    snapshot = store.runtime()
    snapshot.queue.clear()
    assert set(store.runtime().queue) == {"a@1"}


def test_one_queue_item_reads_as_another_process_last_wrote_it(store: Store) -> None:
    # what an attempt's supervisor looks at every second for a cancel (cancel.py)
    assert store.queue_item("a@1") is None
    with store.transaction(5) as runtime:
        runtime.queue["a@1"] = _item(1)
    assert store.queue_item("a@1") == _item(1)
    other = store.reopened()  # `agentjobs cancel`, in another process
    try:
        with other.transaction(5) as runtime:
            runtime.queue["a@1"] = dataclasses.replace(
                _item(1),
                cancel_by="alice",
                cancel_at="2026-11-23T12:05:00+00:00",
                cancel_reason="x",
            )
        seen = store.queue_item("a@1")
        assert seen is not None
        assert seen.cancel == CancelRequest("alice", "2026-11-23T12:05:00+00:00", "x")
        assert store.runtime().queue["a@1"] == seen
        with other.transaction(5) as runtime:
            del runtime.queue["a@1"]
        assert store.queue_item("a@1") is None
    finally:
        close = getattr(other, "close", None)  # a PostgresStore's connections
        if close is not None:
            close()


def test_the_lock_times_out_with_a_clear_error(store: Store, tmp_path: Path) -> None:
    from agentjobs.store import open_store

    other = open_store(store.describe())
    with store.lock(5):
        started = time.monotonic()
        with (
            pytest.raises(UserError, match="is locked by another agentjobs process"),
            other.lock(0.2),
        ):
            pass
        assert time.monotonic() - started < 3


def test_records_append_and_read_in_order(store: Store) -> None:
    day1 = datetime(2026, 11, 22, 23, 59, tzinfo=UTC)
    day2 = day1 + timedelta(minutes=2)
    store.append_records([{"event": "a", "time": "1"}, {"event": "b", "time": "2"}], day1)
    store.append_records([{"event": "c", "time": "3"}], day2)
    assert [r["event"] for r in store.records()] == ["a", "b", "c"]
    assert [r["event"] for r in store.records(newest_first=True)] == ["c", "b", "a"]
    assert [r["event"] for r in store.records(since=day2)] == ["c"]


def test_dead_letters_are_kept_and_updated_in_place(store: Store) -> None:
    entry = {"id": "R1", "job": "a", "run_id": "R1", "status": "open", "attempts": []}
    store.put_dead_letter(entry)
    store.put_dead_letter({**entry, "status": "resolved", "note": "fixed"})
    assert store.dead_letters() == [{**entry, "status": "resolved", "note": "fixed"}]
    assert store.dead_letter("R1") == {**entry, "status": "resolved", "note": "fixed"}
    assert store.dead_letter("nope") is None
    assert store.dead_letter("../../etc/passwd") is None


def test_counters_and_side_files(store: Store) -> None:
    with store.transaction(5):
        pass  # the store exists from here
    store.count("notify_failures")
    store.count("notify_failures", 2)
    assert store.counters() == {"notify_failures": 3}
    store.write_json("gc.json", {"last": "2026-11-23"})
    assert store.read_json("gc.json") == {"last": "2026-11-23"}
    assert store.read_json("missing.json") is None


def test_a_running_attempts_progress_is_replaced_in_place_and_cleared_by_its_attempt(
    store: Store,
) -> None:
    with store.transaction(5):
        pass  # the store exists from here
    assert store.progress() == {}
    store.put_progress("R1", 1, {"percent": 10.0, "message": "copying"})
    store.put_progress("R1", 1, {"percent": 40.0, "message": "copying"})
    store.put_progress("R2", 2, {"turns": 3, "tool": "Bash(make test)"})
    assert store.progress() == {
        "R1": {"percent": 40.0, "message": "copying", "attempt": 1},
        "R2": {"turns": 3, "tool": "Bash(make test)", "attempt": 2},
    }
    store.clear_progress("R2", 1)  # an earlier attempt's end leaves a later one's progress
    store.clear_progress("R1", 1)
    store.clear_progress("R9", 1)  # none: nothing to do
    assert store.progress() == {"R2": {"turns": 3, "tool": "Bash(make test)", "attempt": 2}}
    store.clear_progress("R2", 2)
    assert store.progress() == {}


def _event(n: int, key: str | None = None) -> OutboxEvent:
    return OutboxEvent(
        id=f"01OUTBOX{n:018d}",
        kind="webhook",
        target="http://127.0.0.1:9/hook",
        payload={"event": "failed", "job": "a", "n": n},
        created_at="2026-11-23T12:00:00+00:00",
        next_at="2026-11-23T12:00:00+00:00",
        key=key,
    )


def test_the_outbox_keeps_events_until_delivered_or_given_up(store: Store) -> None:
    assert store.outbox_counts() == (0, 0)
    assert store.outbox_pending(10) == [] and store.outbox_undelivered(10) == []
    with store.transaction(5):
        store.outbox_put([_event(3), _event(1, key="ping"), _event(2)])
    assert store.outbox_pending(10) == [_event(1, key="ping"), _event(2), _event(3)]
    assert store.outbox_pending(2) == [_event(1, key="ping"), _event(2)]  # oldest first
    assert store.outbox_counts() == (3, 0)
    store.outbox_retry(_event(2).id, "2026-11-23T12:01:00+00:00", "HTTP 500")
    store.outbox_done(_event(1).id)
    store.outbox_dead(_event(3).id, "connection refused")
    retried = OutboxEvent.from_dict(
        {**_event(2).to_dict(), "tries": 1, "next_at": "2026-11-23T12:01:00+00:00"}
        | {"error": "HTTP 500"}
    )
    assert store.outbox_pending(10) == [retried]
    dead = OutboxEvent.from_dict({**_event(3).to_dict(), "tries": 1, "error": "connection refused"})
    assert store.outbox_undelivered(10) == [dead]
    assert store.outbox_counts() == (1, 1)
    # another process delivered it meanwhile: nothing comes back to life
    store.outbox_done(_event(1).id)
    store.outbox_retry(_event(1).id, "2026-11-23T12:01:00+00:00", "late")
    store.outbox_dead(_event(1).id, "late")
    store.outbox_done(_event(3).id)  # an undelivered event stays until a person acts
    assert store.outbox_counts() == (1, 1)


def test_outbox_events_written_in_a_failed_transaction_are_not_kept_on_postgres(
    store: Store,
) -> None:
    with pytest.raises(RuntimeError), store.transaction(5):
        store.outbox_put([_event(1)])
        raise RuntimeError("boom")
    # the file backend writes the event at once (a spare notification, never a lost one)
    assert store.outbox_counts()[0] == (0 if store.shared else 1)


def test_retention_keeps_what_it_is_told_to(store: Store) -> None:
    old = time.time() - 10 * 86400
    for run in ("KEEP", "GONE"):
        path = store.log_path(run, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("output\n")
        os.utime(path, (old, old))
    assert store.prune_logs(time.time() - 86400, keep={"KEEP"}) == 1
    assert store.log_path("KEEP", 1).exists() and not store.log_path("GONE", 1).exists()
    store.append_records([{"event": "x", "time": "t"}], datetime(2026, 1, 1, tzinfo=UTC))
    store.append_records([{"event": "y", "time": "t"}], datetime(2026, 11, 23, tzinfo=UTC))
    assert store.archive_records("2026-06-01") == 1
    assert [r["event"] for r in store.records()] == ["y"]


# -- claims: one seam, one eligibility rule, on every backend (issue 11, item 1) ----------------

NOW = "2026-11-23T12:00:00+00:00"


def _spec_job(name: str, workdir: Path, lock: str, **spec: Any) -> AppliedJob:
    from agentjobs.spec import JobSpec

    data = JobSpec(name=name, workdir=str(workdir), lock=lock, command=("true",), **spec).to_dict()
    return AppliedJob(name, data, f"h-{name}", f"s-{name}", f"{name}.yaml", NOW)


def _queued(job: str, lock: str, queued_at: str = NOW, priority: str = "normal") -> QueueItem:
    return QueueItem(
        id=f"{job}@{queued_at}",
        run_id=f"R{abs(hash((job, queued_at))) % 10**25:025d}",
        job=job,
        trigger="schedule",
        priority=priority,
        lock_key=lock,
        queued_at=queued_at,
        not_before=queued_at,
    )


def _setup(store: Store, jobs: list[AppliedJob], items: list[QueueItem], **config: Any) -> None:
    with store.transaction(5) as runtime:
        store.write_applied(AppliedChange(put={j.name: j for j in jobs}, config=config))
        runtime.applied_version = store.applied_version()
        for job in jobs:
            runtime.jobs[job.name] = JobState(job.schedule_hash)
        for item in items:
            runtime.queue[item.id] = item


def _request(**fields: Any) -> ClaimRequest:
    values: dict[str, Any] = {
        "host": "h1",
        "labels": frozenset(),
        "now": "2026-11-23T12:05:00+00:00",
        "slots": 4,
        "host_slots": None,
        "timeout": 5.0,
        "pid": os.getpid(),
    }
    values.update(fields)
    return ClaimRequest(**values)


def _settled(store: Store, claim: Claim) -> None:
    """What settling does to a claim: its item leaves the queue, its hold is let go."""
    with store.transaction(5) as runtime:
        runtime.queue.pop(claim.item.id)
    claim.hold.release()


def test_one_attempt_per_lock_key_until_it_is_settled(store: Store, tmp_path: Path) -> None:
    a, b = _spec_job("a", tmp_path, "repo"), _spec_job("b", tmp_path, "repo")
    _setup(store, [a, b], [_queued("a", "repo"), _queued("b", "repo", "2026-11-23T12:01:00+00:00")])
    first = store.claim(_request())
    assert isinstance(first, Claim) and first.item.job == "a"
    assert (
        first.item.state == QueueState.RUNNING and store.runtime().queue[first.item.id].host == "h1"
    )
    assert store.claim(_request()) is None  # b shares the key
    _settled(store, first)
    second = store.claim(_request())
    assert isinstance(second, Claim) and second.item.job == "b"
    _settled(store, second)


def test_one_claim_per_concurrency_slot(store: Store, tmp_path: Path) -> None:
    jobs = [_spec_job(n, tmp_path, n) for n in ("a", "b")]
    _setup(store, jobs, [_queued("a", "a"), _queued("b", "b")])
    first = store.claim(_request(slots=1))
    assert isinstance(first, Claim)
    assert store.claim(_request(slots=1)) is None  # the only slot is taken
    _settled(store, first)
    second = store.claim(_request(slots=1))
    assert isinstance(second, Claim) and second.item.job != first.item.job
    _settled(store, second)


def test_priority_orders_claims_fifo_within_a_level(store: Store, tmp_path: Path) -> None:
    jobs = [_spec_job(n, tmp_path, n) for n in ("old", "new", "urgent")]
    items = [
        _queued("old", "old", "2026-11-23T12:00:00+00:00"),
        _queued("new", "new", "2026-11-23T12:02:00+00:00"),
        _queued("urgent", "urgent", "2026-11-23T12:03:00+00:00", priority="high"),
    ]
    _setup(store, jobs, items)
    order = []
    while isinstance(claim := store.claim(_request()), Claim):
        order.append(claim.item.job)
        _settled(store, claim)
    assert order == ["urgent", "old", "new"]


def test_one_eligibility_rule_and_a_manual_run_overrides_only_what_a_person_may(
    store: Store, tmp_path: Path
) -> None:
    from agentjobs.spec import AgentSpec

    jobs = [
        _spec_job("paused", tmp_path, "p"),
        _spec_job("off", tmp_path, "o", enabled=False),
        _spec_job("held", tmp_path, "h", agent=AgentSpec(kind="claude", prompt="x")),
        _spec_job("gpu", tmp_path, "g", runs_on=("gpu",)),
    ]
    items = [_queued(j.name, j.spec["lock"]) for j in jobs]
    _setup(store, jobs, items)
    with store.transaction(5) as runtime:
        runtime.jobs["paused"] = JobState("s-paused", paused=True)
        runtime.holds["claude"] = "2026-11-23T13:00:00+00:00"
    assert store.claim(_request()) is None  # nothing here may run
    refused = store.claim(_request(only=items[3].id))
    assert isinstance(refused, Refusal) and "lacks the label(s) gpu" in refused.reason
    manual = store.claim(_request(only=items[0].id))  # a person asked: paused does not stop it
    assert isinstance(manual, Claim) and manual.item.job == "paused"
    _settled(store, manual)
    labelled = store.claim(_request(labels=frozenset({"gpu"})))
    assert isinstance(labelled, Claim) and labelled.item.job == "gpu"
    _settled(store, labelled)


def test_first_is_applied_before_the_claim_and_can_stop_it(store: Store, tmp_path: Path) -> None:
    jobs = [_spec_job(n, tmp_path, n) for n in ("a", "b")]
    _setup(store, jobs, [_queued("a", "a")])

    def add_b(runtime: Runtime) -> bool:
        runtime.queue["b@x"] = dataclasses.replace(_queued("b", "b"), id="b@x", priority="high")
        return True

    claim = store.claim(_request(first=add_b))
    assert isinstance(claim, Claim) and claim.item.id == "b@x"
    _settled(store, claim)
    assert store.claim(_request(first=lambda runtime: False)) is None
    assert store.runtime().queue["a@" + NOW].state == QueueState.QUEUED
