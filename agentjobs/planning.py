"""What a pass decides from the state and `now`: states that follow their specs after an apply,
stored times brought back after a clock jump, the slots that are due (enqueued, or skipped with a
summary record), the runs of jobs whose `needs` are met. Functions of (runtime, applied jobs,
now) that change the runtime in place; what they record, say and notify is collected on the
`Pass` for the engine to write in the same transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from agentjobs.clock import iso, parse
from agentjobs.records import new_ulid
from agentjobs.retry import MAX_HOLD_S
from agentjobs.store import AppliedJob, JobState, QueueItem, Runtime

if TYPE_CHECKING:
    from agentjobs.schedule import SlotPlan
    from agentjobs.spec import JobSpec


@dataclass
class Pass:
    """One pass's context: how it records, where its messages and notifications go."""

    record: Callable[..., dict[str, Any]]  # Engine._record
    tell: Callable[[str], None]
    host: str
    applied_version: str
    one_clock: bool  # Store.one_clock: the clock check runs
    events: list[tuple[Mapping[str, Any], dict[str, Any]]] = field(default_factory=list)


def reconcile_states(
    pass_: Pass, runtime: Runtime, applied: Mapping[str, AppliedJob], now: datetime
) -> None:
    """After an apply that crashed between its two writes: states follow the specs."""
    from agentjobs.reconcile import fresh_state

    for name, job in applied.items():
        state = runtime.jobs.get(name)
        if state is None or state.schedule_hash != job.schedule_hash:
            runtime.jobs[name] = fresh_state(job.parsed, now, state)
    for name in list(runtime.jobs):
        if name not in applied:
            del runtime.jobs[name]
    runtime.applied_version = pass_.applied_version


def check_clock(
    pass_: Pass, runtime: Runtime, applied: Mapping[str, AppliedJob], now: datetime
) -> None:
    """Bring back any stored time further ahead than its schedule allows from `now` (issue
    10, item 5: after a tick while the clock was ahead, or a step back, nothing stays
    silent for the size of the jump). Next-due times: a cron job's is the next slot after
    now (its marker comes back to now), an `every` job's at most one interval (plus
    jitter) away. Queued runs: a retry waits at most its policy's max backoff (MAX_HOLD_S
    for a usage limit) from now, and no longer than it was meant to wait if it was set in
    what is now the future; any other queued run may start now. Holds: the retry that set
    it decides, else MAX_HOLD_S. Cheap when nothing is off: compares strings.

    Not on a store shared by hosts: there a time ahead of this host's clock is as likely
    another host's clock running ahead (skew), and bringing it back would run its slots
    again; the hosts whose clocks are right keep the schedules going."""
    if not pass_.one_clock:
        return
    stamp = iso(now) or ""
    fixed = {"next-run times": 0, "queued runs": 0, "usage-limit holds": 0}
    for name, state in list(runtime.jobs.items()):
        job = applied.get(name)
        if job is None or job.parsed.schedule is None or state.next_due is None:
            continue
        if state.next_due_max_gap is None:  # a state written before the field existed
            from agentjobs.schedule import max_gap

            gap = max_gap(name, job.parsed.schedule)
            state = runtime.jobs[name] = dataclasses.replace(state, next_due_max_gap=gap)
        if not implausible_due(state, stamp, {}):
            continue
        runtime.jobs[name] = recompute_due(name, state, job, now)
        fixed["next-run times"] += 1
    moved: dict[str, str] = {}  # a retry's old not_before -> its new one (for its hold)
    for item in list(runtime.queue.values()):
        if item.state != "queued" or item.not_before <= stamp:
            continue
        origin = item.history[-1].finished_at if item.history else item.queued_at
        longest = 0.0  # a scheduled, manual or replayed run was due when it was queued
        if item.trigger == "retry":
            longest = longest_retry_wait(item, applied.get(item.job))
        latest = iso(now + timedelta(seconds=longest)) or stamp
        if origin <= stamp and item.not_before <= latest:
            continue
        meant = max(0.0, (parse(item.not_before) - parse(origin)).total_seconds())
        wait = min(meant, longest) if origin > stamp else longest
        new = iso(now + timedelta(seconds=wait)) or stamp
        moved[item.not_before] = new
        runtime.queue[item.id] = dataclasses.replace(item, not_before=new)
        fixed["queued runs"] += 1
    horizon = iso(now + timedelta(seconds=MAX_HOLD_S)) or ""
    for key, until in list(runtime.holds.items()):
        if until in moved and moved[until] < until:
            runtime.holds[key] = moved[until]
        elif until > horizon:
            runtime.holds[key] = horizon
        else:
            continue
        fixed["usage-limit holds"] += 1
    if any(fixed.values()):
        what = ", ".join(f"{n} {kind}" for kind, n in fixed.items() if n)
        pass_.tell(
            f"the clock is behind times stored in the state (a tick ran while it was ahead, "
            f"or it was set back); brought back within their schedules from {stamp}: {what}"
        )


def drop_deleted(
    pass_: Pass, runtime: Runtime, applied: Mapping[str, AppliedJob], records: list[dict[str, Any]]
) -> None:
    for item in list(runtime.queue.values()):
        if item.job not in applied and item.state == "queued":
            records.append(
                pass_.record("slot_skipped", item, None, reason="deleted", outcome="skipped")
            )
            del runtime.queue[item.id]


def enqueue_due(
    pass_: Pass,
    runtime: Runtime,
    applied: Mapping[str, AppliedJob],
    now: datetime,
    records: list[dict[str, Any]],
) -> tuple[int, int]:
    from agentjobs.schedule import plan_slots

    stamp = iso(now) or ""
    enqueued = skipped = 0
    for name, state in sorted(runtime.jobs.items()):
        job = applied.get(name)
        if job is None or state.paused or state.next_due is None or state.next_due > stamp:
            continue
        schedule = job.parsed.schedule
        if schedule is None or not job.parsed.enabled:
            runtime.jobs[name] = dataclasses.replace(state, next_due=None)
            continue
        plan = plan_slots(
            name,
            schedule,
            last_slot=parse(state.last_slot) if state.last_slot else None,
            next_due=parse(state.next_due),
            now=now,
        )
        if plan.warning:
            pass_.tell(f"{name}: {plan.warning}")
        if plan.skipped is not None:  # one record however many slots (issue 10, item 7)
            records.append(skip_record(pass_, name, job, plan.skipped.last, "", now, plan))
            skipped += plan.skipped.count
        # Overlap is judged against runs in flight before this tick: the slots of one
        # catch-up batch (catchup: all) all queue up.
        before = {i.id for i in runtime.items_of(name)}
        for slot, trigger in plan.run:
            outcome = enqueue_slot(pass_, runtime, job, slot, trigger, now, before)
            if outcome is None:
                enqueued += 1
            else:
                record = skip_record(pass_, name, job, slot, outcome, now)
                records.append(record)
                skipped += 1
                if outcome == "overlap" and job.parsed.notify is not None:
                    pass_.events.append(
                        (
                            job.spec["notify"],
                            {
                                "event": "skipped_overlap",
                                "job": name,
                                "slot": record["slot"],
                                "run_id": record["run_id"],
                                "time": record["time"],
                                "host": pass_.host,
                                "error": "the previous run was still running at this slot",
                            },
                        )
                    )
        next_due = plan.next_due
        if (
            schedule.every is not None
            and plan.run
            and name not in {i.job for i in runtime.queue.values()}
        ):
            # the `every` slot was skipped: count the interval from now
            next_due = now + timedelta(seconds=schedule.every)
        runtime.jobs[name] = dataclasses.replace(
            runtime.jobs[name], last_slot=iso(plan.last_slot), next_due=iso(next_due)
        )
    return enqueued, skipped


def skip_record(
    pass_: Pass,
    name: str,
    job: AppliedJob,
    slot: datetime,
    reason: str,
    now: datetime,
    plan: SlotPlan | None = None,
) -> dict[str, Any]:
    """A `slot_skipped` record: of one slot, or (with `plan`) the summary of its skipped
    slots, `count` of them from `first` to `last` (`slot` is the last)."""
    fields: dict[str, Any] = {"count": 1, "first": iso(slot), "last": iso(slot)}
    if plan is not None and plan.skipped is not None:
        summary = plan.skipped
        reason = summary.reason
        fields = {"count": summary.count, "first": iso(summary.first), "last": iso(slot)}
        if not summary.exact:
            fields["count_exact"] = False
    stub = QueueItem(
        id=f"{name}@{iso(slot)}",
        run_id=new_ulid(),
        job=name,
        trigger="schedule",
        priority=job.parsed.priority,
        lock_key=job.parsed.lock,
        queued_at=iso(now) or "",
        not_before=iso(now) or "",
        slot=iso(slot),
        attempt=0,
    )
    return pass_.record("slot_skipped", stub, job, reason=reason, outcome="skipped", **fields)


def enqueue_slot(
    pass_: Pass,
    runtime: Runtime,
    job: AppliedJob,
    slot: datetime,
    trigger: str,
    now: datetime,
    before: set[str],
) -> str | None:
    """Enqueue one slot; returns None, or the reason it is skipped (overlap, needs)."""
    name = job.name
    item_id = f"{name}@{iso(slot)}"
    if item_id in runtime.queue:
        return None  # already enqueued by a racing tick (idempotent)
    in_flight = [i for i in runtime.items_of(name) if i.id in before]
    if in_flight:
        if job.parsed.overlap == "skip":
            return "overlap"
        if any(i.state == "queued" for i in in_flight):
            return "overlap"  # queue: at most one pending slot
    state = runtime.jobs[name]
    if state.needs and not needs_met(runtime, name, state):
        return "needs"
    stamp = iso(now) or ""
    run_id = new_ulid()
    runtime.queue[item_id] = QueueItem(
        id=item_id,
        run_id=run_id,
        job=name,
        trigger=trigger,
        priority=job.parsed.priority,
        lock_key=lock_key(job.parsed, run_id),
        queued_at=stamp,
        not_before=stamp,
        slot=iso(slot),
    )
    return None


def enqueue_needs(
    pass_: Pass, runtime: Runtime, applied: Mapping[str, AppliedJob], now: datetime
) -> int:
    """Jobs with `needs` and no schedule run after every needed job succeeded anew."""
    count = 0
    stamp = iso(now) or ""
    waiting = sorted((n, s) for n, s in runtime.jobs.items() if s.needs)
    for name, state in waiting:
        job = applied.get(name)
        if (
            job is None
            or state.paused
            or job.parsed.schedule is not None
            or not job.parsed.enabled
            or not needs_met(runtime, name, state)
            or runtime.items_of(name)
        ):
            continue
        newest = max(runtime.jobs[n].last_success or "" for n in state.needs)
        item_id = f"{name}@needs-{newest}"
        run_id = new_ulid()
        runtime.queue[item_id] = QueueItem(
            id=item_id,
            run_id=run_id,
            job=name,
            trigger="needs",
            priority=job.parsed.priority,
            lock_key=lock_key(job.parsed, run_id),
            queued_at=stamp,
            not_before=stamp,
        )
        count += 1
    return count


def any_due(runtime: Runtime, now: str, check_clock: bool = True) -> bool:
    """Whether a job not paused is due: its slot has come, or its `needs` are met anew; or
    (`check_clock`) a stored time is further ahead than its schedule allows (the clock went
    back: `check_clock`)."""
    horizons: dict[float, str] = {}
    for name, state in runtime.jobs.items():
        due = state.next_due
        if due is not None:
            if due <= now:
                if not state.paused:
                    return True
            elif check_clock and state.next_due_max_gap is not None:  # inlined: a hot loop
                gap = state.next_due_max_gap
                if due > (horizons.get(gap) or horizon_of(now, gap, horizons)):
                    return True
        if state.needs and not state.paused and needs_met(runtime, name, state):
            return True
    if not check_clock:
        return False
    if runtime.holds:
        horizon = horizon_of(now, MAX_HOLD_S, horizons)
        if any(until > horizon for until in runtime.holds.values()):
            return True
    for item in runtime.queue.values():
        if item.state == "queued" and item.not_before > now:
            origin = item.history[-1].finished_at if item.history else item.queued_at
            if origin > now or item.not_before > horizon_of(now, MAX_HOLD_S, horizons):
                return True
    return False


def horizon_of(now: str, seconds: float, cache: dict[float, str]) -> str:
    """`now` plus `seconds`, as a stored time string (one parse per distinct interval)."""
    found = cache.get(seconds)
    if found is None:
        found = cache[seconds] = iso(parse(now) + timedelta(seconds=seconds)) or ""
    return found


def implausible_due(state: JobState, now: str, horizons: dict[float, str]) -> bool:
    """A next-due time further ahead than the schedule allows from now: some slot between now
    and it would be silenced. (A slot marker ahead of now alone silences nothing: the slots up
    to it ran, in what was then the present.)"""
    assert state.next_due is not None
    gap = state.next_due_max_gap
    return (
        gap is not None and state.next_due > now and state.next_due > horizon_of(now, gap, horizons)
    )


def recompute_due(name: str, state: JobState, job: AppliedJob, now: datetime) -> JobState:
    """The job's next-due time from `now`: the next cron slot after the marker (brought back to
    now), or at most one `every` interval away."""
    from agentjobs.schedule import fire_time, next_fire

    schedule = job.parsed.schedule
    assert schedule is not None  # only jobs with a schedule have a next-due time
    stamp = iso(now) or ""
    marker = state.last_slot if state.last_slot is None or state.last_slot <= stamp else stamp
    due = parse(state.next_due) if state.next_due else now
    if schedule.cron is not None:
        slot = next_fire(schedule.cron, schedule.timezone, parse(marker) if marker else now)
        due = fire_time(name, schedule, slot)
    elif schedule.every is not None:
        due = min(due, now + timedelta(seconds=state.next_due_max_gap or schedule.every))
    return dataclasses.replace(state, last_slot=marker, next_due=iso(due))


def needs_met(runtime: Runtime, name: str, state: JobState) -> bool:
    """Every needed job's latest run succeeded after this job's last run started."""
    for need in state.needs:
        other = runtime.jobs.get(need)
        if other is None or other.last_success is None:
            return False
        if other.last_outcome != "succeeded":
            return False
        if state.last_started is not None and other.last_success <= state.last_started:
            return False
    return True


def lock_key(spec: JobSpec, run_id: str) -> str:
    """The job's lock key; with `isolation: worktree` each run works in its own worktree, so the
    key is the run's (runs of jobs on one repository may overlap)."""
    if spec.isolation == "worktree":
        return f"{spec.lock}#worktree-{run_id}"
    return spec.lock


def longest_retry_wait(item: QueueItem, job: AppliedJob | None) -> float:
    """The longest a retry of `item` can be meant to wait (`retry.longest_wait`)."""
    from agentjobs.retry import longest_wait
    from agentjobs.spec import RetryPolicy

    policy = job.parsed.retry if job else RetryPolicy()
    return longest_wait(item.history[-1].outcome if item.history else None, policy)
