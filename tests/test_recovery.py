"""Orphan recovery (issue 10, item 7): an attempt whose lock key is free (on PostgreSQL: whose
lease is gone) is settled from its `attempt_finished` record if one was written, else recorded
`lost`; the records are looked up without the state lock, in one pass (on files, from where they
ended at each claim). The first two tests run on both backends (the `state` fixture); the
record marks and the lookup from them are the file backend's own."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentjobs import records as records_mod
from agentjobs.clock import Clock, iso
from agentjobs.engine import Engine
from agentjobs.errors import UserError
from agentjobs.store import Claim, QueueItem, Store, open_store
from agentjobs.store.files import FileStore
from tests.conftest import State, write

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


def _claimed(cli: Any, jobs_dir: Path, location: str, count: int) -> list[QueueItem]:
    """`count` jobs on keys of their own, applied, enqueued and claimed the way a tick claims
    them (the claim's write, `records_at` included), then the claiming process is gone: its
    keys are free (its leases released), the items still say running."""
    for n in range(count):
        write(
            jobs_dir / f"j{n}.yaml",
            json.dumps(
                {
                    "command": [sys.executable, "-c", "pass"],
                    "schedule": {"every": "1d"},
                    "lock": f"key-{n}",
                    "retry": {"attempts": 2, "backoff": {"initial": "1h", "max": "1h"}},
                }
            ),
        )
    applied = cli("--jobs-dir", str(jobs_dir), "--state-dir", location, "apply")
    assert applied.code == 0, applied.err
    engine = Engine(open_store(location), clock=Clock(T0), host="gone")
    engine._prepare()
    claimed = []
    for _ in range(count):
        claim = engine._claim()
        assert isinstance(claim, Claim)
        claim.hold.release()
        started = engine._record(
            "attempt_started",
            claim.item,
            claim.job,
            started_at=iso(T0),
            child_pid=1,  # long gone: the attempt's supervisor was killed
            supervisor={"pid": 1, "start": 0, "boot_id": "gone"},
            log_path="x.log",
        )
        engine.store.append_records([started], T0)
        claimed.append(claim.item)
    _close(engine.store)
    return claimed


def _close(store: Store) -> None:
    close = getattr(store, "close", None)  # a PostgresStore's connections
    if close is not None:
        close()


def _finished(engine: Engine, item: QueueItem, outcome: str = "succeeded") -> dict[str, Any]:
    ended = engine._decide(
        item,
        engine.store.applied()[item.job],
        T0 + timedelta(minutes=1),
        outcome=outcome,
        exit_code=0,
        signal=None,
        error=None,
        output="done\n",
        started_at=iso(T0) or "",
        duration_s=60.0,
        log_path="x.log",
    )
    engine.store.append_records(ended, T0 + timedelta(minutes=1))
    return ended[0]


def test_orphans_are_settled_as_recorded_or_lost_from_one_lookup_without_the_state_lock(
    cli: Any, jobs_dir: Path, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _claimed(cli, jobs_dir, state.location, 3)
    store = open_store(state.location)
    engine = Engine(store, clock=Clock(T0 + timedelta(minutes=2)), host="new-host")
    if not state.shared:  # a shared store keeps no marks: its lookup is one indexed query
        day = f"{T0:%Y-%m-%d}"
        # each claim remembers where the records ended (after the previous attempt's start)
        marks = [(item.records_at or "").partition(":") for item in items]
        assert {mark_day for mark_day, _, _ in marks} == {day}
        sizes = [int(size) for _, _, size in marks]
        assert sizes == sorted(set(sizes)) and sizes[0] == 0
    _finished(engine, items[0])  # its supervisor recorded it, then was killed
    _finished(engine, items[1], "failed")
    lookups: list[int] = []
    real = type(store).finished_records

    def finished_records(self: Store, orphans: Any, now: datetime) -> Any:
        orphans = list(orphans)
        lookups.append(len(orphans))
        other = open_store(state.location)
        try:  # the state lock is free meanwhile: an `apply` need not wait
            with other.lock(0.0):
                pass
        except UserError as exc:
            pytest.fail(f"the state lock was held during the records lookup: {exc}")
        finally:
            _close(other)
        return real(self, orphans, now)

    monkeypatch.setattr(type(store), "finished_records", finished_records)
    recovered, _, _ = engine._prepare()
    assert (recovered, lookups) == (3, [3])
    finished = [
        (r["job"], r["attempt"], r["outcome"], r["next"])
        for r in store.records()
        if r["event"] == "attempt_finished"
    ]
    assert sorted(finished) == [
        ("j0", 1, "succeeded", "done"),
        ("j1", 1, "failed", "retry"),
        ("j2", 1, "lost", "retry"),  # no record: lost, and retried
    ]
    queue = {i.job: i for i in store.runtime().queue.values()}
    assert set(queue) == {"j1", "j2"}
    assert {(i.state, i.attempt) for i in queue.values()} == {("queued", 2)}
    _close(store)


def test_an_orphan_settled_between_the_lookup_and_the_transaction_is_left_alone(
    cli: Any, jobs_dir: Path, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    (item,) = _claimed(cli, jobs_dir, state.location, 1)
    store = open_store(state.location)
    engine = Engine(store, clock=Clock(T0 + timedelta(minutes=2)))
    real = type(store).finished_records

    def finished_records(self: Store, orphans: Any, now: datetime) -> Any:
        found = real(self, orphans, now)  # nothing recorded yet: it would be `lost`
        # ... but its supervisor records and settles it now
        other = Engine(open_store(state.location), clock=Clock(T0 + timedelta(minutes=1)))
        ended = _finished(other, item)
        with other.store.transaction(5.0) as runtime:
            other._settle(runtime, runtime.queue[item.id], other.store.applied()[item.job], ended)
        _close(other.store)
        return found

    monkeypatch.setattr(type(store), "finished_records", finished_records)
    recovered, _, _ = engine._prepare()
    assert recovered == 0
    outcomes = [r["outcome"] for r in store.records() if r["event"] == "attempt_finished"]
    assert outcomes == ["succeeded"]  # never also `lost`
    assert store.runtime().queue == {}
    _close(store)


def test_an_orphan_from_a_state_without_marks_is_still_found(
    cli: Any, jobs_dir: Path, state_dir: Path
) -> None:
    (item,) = _claimed(cli, jobs_dir, str(state_dir), 1)
    store = FileStore(state_dir)
    with store.transaction(5.0) as runtime:  # as written before `records_at` existed
        runtime.queue[item.id] = dataclasses.replace(runtime.queue[item.id], records_at=None)
    raw = json.loads((state_dir / "runtime.json").read_text())
    assert "records_at" not in raw["queue"][item.id]
    assert QueueItem.from_dict(raw["queue"][item.id]).records_at is None
    engine = Engine(store, clock=Clock(T0 + timedelta(minutes=2)))
    _finished(engine, item)
    assert engine._prepare()[0] == 1
    outcomes = [r["outcome"] for r in store.records() if r["event"] == "attempt_finished"]
    assert outcomes == ["succeeded"]


def test_find_finished_reads_from_each_mark_in_one_pass_and_parses_only_matching_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "records"
    monkeypatch.setattr(records_mod, "_CHUNK", 97)  # lines cut across chunks
    monkeypatch.setattr(records_mod, "MARK_SLACK", 0)

    def rec(event: str, run_id: str, attempt: int, **more: Any) -> dict[str, Any]:
        return {"event": event, "time": "t", "run_id": run_id, "attempt": attempt, **more}

    day1, day2 = T0, T0 + timedelta(days=1)
    # before the marks: an older run's finish with the same id is not searched
    records_mod.append(folder, [rec("attempt_finished", "R1", 1, outcome="old")], day1)
    mark1 = records_mod.mark(folder, day1)
    filler = [rec("attempt_finished", f"X{n}", 1, output_tail='"run_id":"R1"') for n in range(50)]
    records_mod.append(folder, filler, day1)
    records_mod.append(folder, [rec("attempt_started", "R1", 1)], day1)
    mark2 = records_mod.mark(folder, day1)
    records_mod.append(folder, [rec("attempt_finished", "R2", 1, outcome="failed")], day1)
    # the next day (an attempt across midnight), and a torn last line
    records_mod.append(folder, [rec("attempt_finished", "R1", 1, outcome="succeeded")], day2)
    with open(records_mod.day_file(folder, day2), "ab") as handle:
        handle.write(b'{"event":"attempt_finished","run_id":"R3","attem')
    found = records_mod.find_finished(
        folder, {("R1", 1): mark1, ("R2", 1): mark2, ("R3", 1): mark2, ("R2", 2): mark2}
    )
    assert {k: v["outcome"] for k, v in found.items()} == {
        ("R1", 1): "succeeded",
        ("R2", 1): "failed",
    }
    assert records_mod.find_finished(folder, {}) == {}


def test_postgres_finds_every_orphans_finish_record_in_one_query(
    pg_url: str, tmp_path: Path
) -> None:
    from agentjobs.store.postgres import PostgresStore

    store = PostgresStore(pg_url, local_dir=tmp_path / "local")
    try:
        store.migrate()

        def item(run_id: str, attempt: int) -> QueueItem:
            return QueueItem(
                id=f"{run_id}-item",
                run_id=run_id,
                job="j",
                trigger="schedule",
                priority="normal",
                lock_key="k",
                queued_at=iso(T0) or "",
                not_before=iso(T0) or "",
                attempt=attempt,
                state="running",
                started_at=iso(T0),
            )

        def rec(event: str, run_id: str, attempt: int, outcome: str) -> dict[str, Any]:
            return {"event": event, "run_id": run_id, "attempt": attempt, "outcome": outcome}

        store.append_records(
            [
                rec("attempt_finished", "R1", 1, "failed"),
                rec("attempt_started", "R1", 2, ""),
                rec("attempt_finished", "R1", 2, "succeeded"),
                rec("attempt_started", "R2", 1, ""),
                rec("attempt_finished", "OTHER", 1, "succeeded"),
            ],
            T0 + timedelta(hours=1),
        )
        assert store.records_mark(T0) is None
        found = store.finished_records([item("R1", 2), item("R2", 1)], T0)
        assert {k: v["outcome"] for k, v in found.items()} == {("R1", 2): "succeeded"}
        assert store.finished_records([], T0) == {}
    finally:
        store.close()
