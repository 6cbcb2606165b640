"""`agentjobs repair`: rebuild a lost or damaged runtime.json from what survives it.

runtime.json holds the job states and the queue (store/files.py). When it is missing after an
apply, or not of the right shape, the store refuses to start over from nothing (that would drop
pending retries and run every `every` job again at once: issue 10, item 9). This rebuilds it
from the applied jobs (applied.json) and the run records, which are appended before every state
write that follows them (DESIGN.md), so they hold everything that matters:

- each applied job's run summary (last started / finished / outcome / success) from its newest
  records, and its schedule markers computed from now as an apply computes them
  (`reconcile.fresh_state`): `every` counts from the last run's end; slots that fell while the
  state was damaged are not caught up;
- each pending retry: a run whose newest record is an `attempt_finished` with `next: retry` is
  queued again with its attempt number, failure count, history and `next_attempt_at`;
- each attempt that started and has no finish record is put back as `running`, exactly as a
  tick that died would have left it: the next tick's orphan recovery judges it with the usual
  rule (its lock key still held: it lives; otherwise its recorded finish, or `lost` and the
  retry policy);
- a replay (`replayed`) not started yet is queued again; usage-limit holds still in force come
  back from the `hold` of their records.

Not in the records, so not rebuilt: `pause` (paused jobs come back resumed) and runs queued but
never started (a `run JOB` or a slot enqueued just before the damage; the schedule enqueues its
next slot as usual). Files only: PostgreSQL changes its state in transactions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentjobs.clock import iso
from agentjobs.errors import UserError
from agentjobs.store import (
    AppliedJob,
    AttemptSummary,
    JobState,
    QueueItem,
    QueueState,
    Runtime,
    Store,
)

# outcomes that do not use up one of the retry policy's attempts (engine.Engine._finish)
_FREE_OUTCOMES = ("interrupted", "rate_limited", "succeeded")


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """One run put back in the queue."""

    job: str
    run_id: str
    attempt: int
    state: str  # queued (a retry or replay waiting for `not_before`) | running (to recover)
    not_before: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class RepairResult:
    path: str
    problem: str  # what was wrong with the old file ("" when --force rebuilt a sound one)
    kept: str | None  # where the old file was kept, None when there was none
    jobs: tuple[str, ...]
    retries: tuple[Rebuilt, ...]  # queued again: pending retries and replays
    recovering: tuple[Rebuilt, ...]  # started, never finished: the next tick recovers them
    holds: Mapping[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "problem": self.problem,
            "kept": self.kept,
            "jobs": list(self.jobs),
            "retries": [r.as_dict() for r in self.retries],
            "recovering": [r.as_dict() for r in self.recovering],
            "holds": dict(self.holds),
        }


@dataclass(slots=True)
class _Run:
    """What the records say about one run, oldest first."""

    first: dict[str, Any]
    last: dict[str, Any]
    finished: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def repair(store: Store, now: datetime, *, force: bool, lock_timeout: float) -> RepairResult:
    """Rebuild runtime.json under the state lock; the old file, if any, is kept beside it as
    `runtime.json.damaged-<time>`. Refuses a sound runtime.json unless `force`."""
    from agentjobs.store import state_directory

    files = state_directory(store)
    if files is None:
        raise UserError(
            f"the state in {store.describe()} is in PostgreSQL, which changes it in "
            "transactions: `repair` is not needed there (it rebuilds a state directory's "
            "runtime.json)"
        )
    store = files
    if not store.exists():
        raise UserError(f"no state in {store.describe()}; nothing to repair")
    with store.lock(lock_timeout):
        problem = store.runtime_problem()
        path = store.root / "runtime.json"
        if problem is None and not force:
            raise UserError(
                f"{path} is sound; nothing to repair (pass --force to rebuild it from the run "
                "records anyway)"
            )
        applied = store.applied()
        runtime, retries, recovering = rebuild(applied, store.records(), now)
        runtime.applied_version = store.applied_version()
        kept = store.replace_runtime(runtime, now)
    return RepairResult(
        path=str(path),
        problem=problem or "",
        kept=None if kept is None else str(kept),
        jobs=tuple(sorted(runtime.jobs)),
        retries=retries,
        recovering=recovering,
        holds=dict(runtime.holds),
    )


def rebuild(
    applied: Mapping[str, AppliedJob], records: Iterable[Mapping[str, Any]], now: datetime
) -> tuple[Runtime, tuple[Rebuilt, ...], tuple[Rebuilt, ...]]:
    """The runtime the records imply (pure: no store). Records oldest first."""
    from agentjobs.reconcile import fresh_state
    from agentjobs.spec import job_from_dict

    stamp = iso(now) or ""
    summaries: dict[str, dict[str, str]] = {}  # job -> JobState's last_* fields
    runs: dict[str, _Run] = {}  # runs not known to be over
    holds: dict[str, str] = {}
    for record in records:
        event = record.get("event")
        job, run_id = record.get("job"), record.get("run_id")
        if not isinstance(job, str) or not isinstance(run_id, str):
            continue
        if event == "attempt_started":
            summary = summaries.setdefault(job, {})
            summary["last_started"] = str(record.get("started_at") or record.get("time"))
            summary["last_run_id"] = run_id
            _track(runs, run_id, record)
        elif event == "attempt_finished":
            summary = summaries.setdefault(job, {})
            finished = str(record.get("finished_at") or record.get("time"))
            summary.update(last_finished=finished, last_outcome=str(record.get("outcome")))
            summary["last_run_id"] = run_id
            if record.get("outcome") == "succeeded":
                summary["last_success"] = finished
            hold, until = record.get("hold"), record.get("next_attempt_at")
            if isinstance(hold, str) and isinstance(until, str) and until > stamp:
                holds[hold] = max(until, holds.get(hold, ""))
            if record.get("next") == "retry":
                _track(runs, run_id, record).finished.append(dict(record))
            else:
                runs.pop(run_id, None)  # done or dead-lettered
        elif event == "replayed":
            _track(runs, run_id, record)
        elif event in ("dead_lettered", "cancelled"):  # over: a cancel removed its retry
            runs.pop(run_id, None)
    runtime = Runtime(holds=holds)
    for name, job in applied.items():
        spec = job_from_dict(dict(job.spec))
        last = summaries.get(name, {})
        previous = JobState(
            schedule_hash="",
            last_finished=last.get("last_finished"),
            last_started=last.get("last_started"),
            last_run_id=last.get("last_run_id"),
            last_outcome=last.get("last_outcome"),
            last_success=last.get("last_success"),
        )
        runtime.jobs[name] = fresh_state(spec, now, previous)
    retries: list[Rebuilt] = []
    recovering: list[Rebuilt] = []
    for run_id, run in runs.items():
        item = _queue_item(run_id, run, applied.get(run.last["job"]), stamp)
        if item is None:
            continue
        runtime.queue[item.id] = item
        rebuilt = Rebuilt(item.job, run_id, item.attempt, item.state, item.not_before)
        (recovering if item.state == "running" else retries).append(rebuilt)
    return runtime, tuple(retries), tuple(recovering)


def _track(runs: dict[str, _Run], run_id: str, record: Mapping[str, Any]) -> _Run:
    run = runs.get(run_id)
    if run is None:
        run = runs[run_id] = _Run(first=dict(record), last=dict(record))
    else:
        run.last = dict(record)
    return run


def _queue_item(run_id: str, run: _Run, applied: AppliedJob | None, stamp: str) -> QueueItem | None:
    """The queue item a run's newest record implies; None for a deleted job (nothing to run)."""
    last = run.last
    if applied is None:
        return None
    attempt = int(last.get("attempt") or 1)
    earlier = {r.get("attempt"): r for r in run.finished}  # a record may be there twice
    history = tuple(
        _summary(earlier[n])
        for n in sorted(n for n in earlier if isinstance(n, int) and n <= attempt)
        if n < attempt or last["event"] == "attempt_finished"
    )
    failures = sum(1 for h in history if h.outcome not in _FREE_OUTCOMES)
    trigger = str(run.first.get("trigger") or "schedule")
    slot = last.get("slot")
    item_id = f"{last['job']}@{slot}" if slot else f"{last['job']}@{trigger}-{run_id}"
    spec = applied.spec
    base = QueueItem(
        id=item_id,
        run_id=run_id,
        job=str(last["job"]),
        trigger=str(last.get("trigger") or trigger),
        priority=str(spec.get("priority", "normal")),
        lock_key=str(last.get("lock_key") or run.first.get("lock_key")),
        queued_at=str(run.first.get("queued_at") or run.first.get("time") or stamp),
        not_before=stamp,
        slot=slot,
        attempt=attempt,
        failures=failures,
        corrective=bool(last.get("corrective")),
        replay_of=last.get("replay_of") or run.first.get("replay_of"),
        history=history,
    )
    if last["event"] == "attempt_finished":  # a pending retry
        return dataclasses.replace(
            base,
            attempt=base.attempt + 1,
            trigger="retry",
            corrective=bool(spec.get("retry", {}).get("corrective")),
            not_before=str(last.get("next_attempt_at") or stamp),
        )
    if last["event"] == "attempt_started":  # never finished: as its dead tick left it
        return dataclasses.replace(
            base,
            state=QueueState.RUNNING,
            started_at=last.get("started_at") or last.get("time"),
            host=last.get("host"),
            pid=last.get("pid"),
            child_pid=last.get("child_pid"),
        )
    return dataclasses.replace(base, not_before=str(last.get("time") or stamp))  # a replay


def _summary(record: Mapping[str, Any]) -> AttemptSummary:
    return AttemptSummary(
        attempt=int(record.get("attempt") or 1),
        outcome=str(record.get("outcome")),
        started_at=str(record.get("started_at") or ""),
        finished_at=str(record.get("finished_at") or record.get("time") or ""),
        exit_code=record.get("exit_code"),
        signal=record.get("signal"),
        error=record.get("error"),
        log_path=record.get("log_path"),
        output_tail=str(record.get("output_tail") or "")[-1024:],
        agent=record.get("agent"),
    )
