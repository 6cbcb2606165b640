"""How an attempt ends, as values: pure functions, no I/O.

`finish_records()` turns what an attempt did (`Ended`) into the records that end it: its
`attempt_finished` with the retry policy's decision (retry.py: next, when, why, a usage-limit
hold) and, when the run ends in the dead-letter queue, `dead_lettered`. A supervisor appends
these before anything else, so an attempt's true outcome is on disk whoever settles it.

`settle()` turns such an `attempt_finished` record into a `Settlement`: the run's next attempt or
its dead letter, a usage-limit hold, the job's new state, the notifications, the result. The
engine applies a settlement to the state in one transaction, whoever settles: the tick, the
attempt's supervisor, or recovery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from agentjobs.clock import iso, parse
from agentjobs.store import (
    AppliedJob,
    AttemptSummary,
    CancelRequest,
    DeadLetter,
    JobState,
    QueueItem,
    QueueState,
    Review,
)

if TYPE_CHECKING:
    import random


@dataclass(frozen=True, slots=True)
class AttemptResult:
    job: str
    run_id: str
    attempt: int
    trigger: str
    outcome: str
    exit_code: int | None
    signal: str | None
    error: str | None
    duration_s: float
    next: str  # done | retry | dead_letter
    next_at: str | None
    log_path: str
    dlq_id: str | None = None

    @property
    def ok(self) -> bool:
        """The attempt did its work (awaiting review: a person decides what lands)."""
        return self.outcome in ("succeeded", "awaiting_review")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True)
class Ended:
    """What an attempt did, as its runner saw it."""

    outcome: str
    started_at: str
    log_path: str
    exit_code: int | None = None
    signal: str | None = None
    error: str | None = None
    output: str = ""  # the output's tail, as recorded
    output_for_match: str | None = None  # what `retry_on`/`never_on` patterns see (else output)
    duration_s: float | None = None  # None: from `started_at` to now
    agent: dict[str, Any] | None = None  # the agent's facts (session id, cost...)
    land: dict[str, Any] | None = None  # what became of its branch (attempt._worktree_end)
    permanent: bool = False  # the agent said a retry cannot fix it
    reset_at: datetime | None = None  # when the agent's usage limit resets
    cancel: CancelRequest | None = None  # outcome cancelled: who asked, when


@dataclass(frozen=True, slots=True)
class Recorder:
    """Who writes records: every record carries this process's host and pid."""

    host: str
    pid: int

    def record(
        self, event: str, item: QueueItem, job: AppliedJob | None, time: str, **fields: Any
    ) -> dict[str, Any]:
        """The JSON object of an `event` record of `item` (typed and encoded by runrecords)."""
        from agentjobs import runrecords

        return runrecords.encode(
            runrecords.make(
                event,
                time=time,
                run_id=item.run_id,
                job=item.job,
                attempt=item.attempt,
                trigger=item.trigger,
                slot=item.slot,
                queued_at=item.queued_at,
                lock_key=item.lock_key,
                priority=item.priority,
                host=self.host,
                pid=self.pid,
                spec_hash=job.spec_hash if job else None,
                git_commit=job.git_commit if job else None,
                corrective=item.corrective,
                replay_of=item.replay_of,
                secrets_redacted=bool(job is not None and job.parsed.secrets),
                **fields,
            )
        )


def finish_records(
    item: QueueItem,
    job: AppliedJob | None,
    ended: Ended,
    now: datetime,
    recorder: Recorder,
    rng: random.Random | None = None,
) -> list[dict[str, Any]]:
    """The records that end an attempt (see the module's docstring). Reads no state."""
    from agentjobs.retry import Next, Outcome, conclude
    from agentjobs.spec import RetryPolicy

    stamp = iso(now) or ""
    outcome = Outcome(ended.outcome)
    fallback = bool(job and job.parsed.agent and job.parsed.agent.fallback)
    decision = conclude(
        job.parsed.retry if job else RetryPolicy(),
        outcome,
        exit_code=ended.exit_code,
        output=ended.output_for_match if ended.output_for_match is not None else ended.output,
        failures=item.failures,
        attempt=item.attempt,
        now=now,
        permanent=ended.permanent,
        error=ended.error,
        # with fallback agents a usage limit is no reason to wait for the reset: the retry
        # (after the backoff) runs the first fallback whose account is free
        reset_at=None if fallback else ended.reset_at,
        job_deleted=job is None,
        rng=rng,
    )
    hold = None
    if outcome == Outcome.RATE_LIMITED and decision.next == Next.RETRY:
        # other jobs sharing the limit wait as long: the account of the agent that ran (a
        # fallback's own when one ran)
        ran = (ended.agent or {}).get("limit_key")
        hold = str(ran) if ran else job.limit_key if job else None
    # the account stays held until its reset even when the retry (a fallback's) is sooner
    hold_until = None
    if hold and fallback and ended.reset_at is not None and ended.reset_at > now:
        hold_until = iso(ended.reset_at)
    duration_s = ended.duration_s
    if duration_s is None:
        duration_s = max(0.0, (now - parse(ended.started_at)).total_seconds())
    finished = recorder.record(
        "attempt_finished",
        item,
        job,
        stamp,
        started_at=ended.started_at,
        finished_at=stamp,
        duration_s=round(duration_s, 3),
        outcome=ended.outcome,
        exit_code=ended.exit_code,
        signal=ended.signal,
        error=ended.error,
        output_tail=ended.output,
        log_path=ended.log_path,
        next=decision.next.value,
        next_attempt_at=iso(decision.at) if decision.at else None,
        reason=decision.reason,
        **({"agent": ended.agent} if ended.agent else {}),
        **({"land": ended.land} if ended.land else {}),
        **({"hold": hold} if hold else {}),
        **({"hold_until": hold_until} if hold_until else {}),
        **_cost(ended.agent),
        **({"by": ended.cancel.by, "cancelled_at": ended.cancel.at} if ended.cancel else {}),
    )
    if decision.next != Next.DEAD_LETTER:
        return [finished]
    dead = recorder.record(
        "dead_lettered",
        item,
        job,
        stamp,
        dlq_id=item.run_id,
        reason=decision.reason,
        outcome=ended.outcome,
    )
    return [finished, dead]


def _hold(finished: Mapping[str, Any]) -> tuple[str, str] | None:
    """(account, until) a rate-limited attempt holds: until its retry, or its reset."""
    until = finished.get("hold_until") or finished.get("next_attempt_at")
    return (finished["hold"], until) if finished.get("hold") and until else None


def _cost(facts: Mapping[str, Any] | None) -> dict[str, Any]:
    """The record's `cost_usd` (and `cost_estimated`) from the agent's facts, if known."""
    cost = (facts or {}).get("cost_usd")
    if not isinstance(cost, int | float):
        return {}
    return {"cost_usd": cost, "cost_estimated": bool((facts or {}).get("cost_estimated"))}


@dataclass(frozen=True, slots=True)
class Settlement:
    """What settling an attempt changes, for the engine to apply in one transaction."""

    result: AttemptResult
    retry: QueueItem | None  # the run's next attempt (queued again), or None: the run ended
    dead_letter: DeadLetter | None  # its dead-letter entry, when it ended there
    hold: tuple[str, str] | None  # (usage-limit key, until): jobs sharing it wait
    state: JobState | None  # the job's new state (None: the job has no state)
    events: tuple[str, ...]  # notification events (`notify`)
    pings: tuple[str, ...]  # health-check pings (`notify.ping`)
    fields: Mapping[str, Any]  # what every event of this settlement says
    message: str | None  # one line for whoever watches (a retry, a dead letter)
    # the retry a person's cancel dropped (the attempt ended by itself before its supervisor
    # saw the cancel): the engine records it `cancelled` (`Engine._settle`)
    cancelled: QueueItem | None = None
    review: Review | None = None  # outcome awaiting_review: its entry in the review inbox


def settle(
    item: QueueItem, job: AppliedJob | None, state: JobState | None, finished: Mapping[str, Any]
) -> Settlement:
    """The settlement of `item`'s attempt from its `attempt_finished` record (`finished`)."""
    stamp = finished["finished_at"]
    outcome = finished["outcome"]
    error = finished.get("error")
    next_step = finished.get("next", "done")
    next_at = finished.get("next_attempt_at")
    reason = finished.get("reason")
    summary = AttemptSummary(
        attempt=item.attempt,
        outcome=outcome,
        started_at=finished.get("started_at") or item.started_at or stamp,
        finished_at=stamp,
        exit_code=finished.get("exit_code"),
        signal=finished.get("signal"),
        error=error,
        log_path=finished.get("log_path"),
        output_tail=(finished.get("output_tail") or "")[-1024:],
        agent=finished.get("agent"),
    )
    retry = dead = message = cancelled = None
    cancel = item.cancel
    if next_step == "retry" and cancel is not None:
        # cancelled while it ended by itself: the run ends, its retry is recorded cancelled
        cancelled = _next_attempt(item, job, outcome, next_at or stamp, summary)
        next_step, next_at = "done", None
        message = (
            f"{item.job}: run {item.run_id} attempt {item.attempt} {outcome}"
            f"{f' ({error})' if error else ''}; not retried: cancelled by {cancel.by}"
        )
    elif next_step == "retry":
        retry = _next_attempt(item, job, outcome, next_at or stamp, summary)
        message = (
            f"{item.job}: run {item.run_id} attempt {item.attempt} {outcome}"
            f"{f' ({error})' if error else ''}; next attempt at {next_at} ({reason})"
        )
    elif next_step == "dead_letter":
        dead = dead_letter_entry(item, job, summary, reason)
        message = (
            f"{item.job}: run {item.run_id} dead-lettered after attempt {item.attempt} "
            f"({reason}); see `agentjobs dlq show {item.run_id}`"
        )
    review = review_entry(item, job, finished) if outcome == "awaiting_review" else None
    if review is not None:
        why = f"its merge conflicts ({review.conflict[:200]})" if review.conflict else "review"
        message = (
            f"{item.job}: run {item.run_id} awaits {why}; see `agentjobs review show {item.run_id}`"
        )
    dlq_id = item.run_id if dead else None
    events, pings = finish_events(outcome, state.last_outcome if state else None, dlq_id)
    return Settlement(
        result=AttemptResult(
            job=item.job,
            run_id=item.run_id,
            attempt=item.attempt,
            trigger=item.trigger,
            outcome=outcome,
            exit_code=finished.get("exit_code"),
            signal=finished.get("signal"),
            error=error,
            duration_s=float(finished.get("duration_s") or 0.0),
            next=next_step,
            next_at=next_at,
            log_path=finished.get("log_path") or "",
            dlq_id=dlq_id,
        ),
        retry=retry,
        dead_letter=dead,
        hold=_hold(finished),
        state=job_state_after(state, job, item, outcome, stamp, next_step),
        events=events if job is not None and job.parsed.notify is not None else (),
        pings=pings if job is not None and job.parsed.notify is not None else (),
        fields={"outcome": outcome, "error": error, "next": next_step, "next_attempt_at": next_at},
        message=message,
        cancelled=cancelled,
        review=review,
    )


def _next_attempt(
    item: QueueItem, job: AppliedJob | None, outcome: str, at: str, last: AttemptSummary
) -> QueueItem:
    from agentjobs.retry import failures_after

    return dataclasses.replace(
        item,
        state=QueueState.QUEUED,
        attempt=item.attempt + 1,
        failures=failures_after(item.failures, outcome),
        not_before=at,
        trigger="retry",
        corrective=bool(job and job.parsed.retry.corrective),
        history=(*item.history, last),
        started_at=None,
        pid=None,
        host=None,
    )


def job_state_after(
    state: JobState | None,
    job: AppliedJob | None,
    item: QueueItem,
    outcome: str,
    stamp: str,
    next_step: str,
) -> JobState | None:
    """The job's state once `item`'s run took a step: its last run and outcome, and, when the
    run is over, its next `every` slot."""
    if state is None:
        return None
    state = dataclasses.replace(
        state, last_outcome=outcome, last_finished=stamp, last_run_id=item.run_id
    )
    if outcome in ("succeeded", "awaiting_review"):  # the agent's work is done either way
        state = dataclasses.replace(state, last_success=stamp)
    if next_step != "retry" and job is not None:
        state = after_run(state, job, parse(stamp))
    return state


def after_run(state: JobState, job: AppliedJob, now: datetime) -> JobState:
    """`every` counts from the end of the run (systemd OnUnitInactiveSec)."""
    from agentjobs.schedule import fire_time

    schedule = job.parsed.schedule
    if schedule is None or schedule.every is None or not job.parsed.enabled:
        return state
    due = fire_time(job.name, schedule, now + timedelta(seconds=schedule.every or 0))
    return dataclasses.replace(state, next_due=iso(due))


def finish_events(
    outcome: str, previous: str | None, dlq_id: str | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The notification events and health-check pings of a finished attempt."""
    if outcome in ("succeeded", "awaiting_review"):
        recovered = ("recovered",) if previous not in (None, "succeeded", outcome) else ()
        return (outcome, *recovered), ("success",)
    specific = {"timeout": "timeout", "silence": "silence", "rate_limited": "rate_limited"}
    # neither is the job's failure: a shutdown's, a person's decision
    quiet = outcome in ("interrupted", "cancelled")
    events = () if quiet else (specific.get(outcome, "failed"),)
    pings = () if quiet or outcome == "rate_limited" else ("fail",)
    if dlq_id:
        events = (*events, "dead_lettered")
    return events, pings


def dead_letter_entry(
    item: QueueItem, job: AppliedJob | None, last: AttemptSummary, reason: str | None
) -> DeadLetter:
    """The dead-letter entry of a run that ended with `last`: the spec as it was, every
    attempt."""
    return DeadLetter(
        id=item.run_id,
        job=item.job,
        run_id=item.run_id,
        slot=item.slot,
        trigger=item.trigger,
        created_at=last.finished_at,
        reason=reason,
        spec=dict(job.spec) if job else None,
        spec_hash=job.spec_hash if job else None,
        attempts=tuple(h.to_dict() for h in (*item.history, last)),
        replay_of=item.replay_of,
    )


def review_entry(
    item: QueueItem, job: AppliedJob | None, finished: Mapping[str, Any]
) -> Review | None:
    """The review-inbox entry of a run that ended awaiting review (its record's `land`)."""
    land = finished.get("land")
    if not isinstance(land, Mapping) or not land.get("branch"):
        return None
    return Review(
        id=item.run_id,
        job=item.job,
        run_id=item.run_id,
        attempt=item.attempt,
        created_at=finished["finished_at"],
        workdir=job.parsed.workdir if job else "",
        branch=str(land["branch"]),
        base=land.get("base"),
        commit=land.get("commit"),
        into=str(land.get("into") or ""),
        strategy=str(land.get("strategy") or "merge"),
        mode=str(land.get("mode") or "review"),
        diffstat=land.get("diffstat"),
        conflict=land.get("conflict"),
        log_path=finished.get("log_path"),
        cost_usd=finished.get("cost_usd"),
    )


def abandoned(item: QueueItem, finished: Mapping[str, Any]) -> AttemptResult:
    """An attempt whose lease was lost and which another host recorded: this host reports it
    as interrupted and records nothing."""
    return dataclasses.replace(
        as_recorded(item, finished),
        outcome="interrupted",
        error="the lease was lost; another host recorded this attempt",
        next="done",
        next_at=None,
        dlq_id=None,
    )


def as_recorded(item: QueueItem, finished: Mapping[str, Any]) -> AttemptResult:
    """What an attempt's `attempt_finished` record says, as a result."""
    return AttemptResult(
        job=item.job,
        run_id=item.run_id,
        attempt=item.attempt,
        trigger=item.trigger,
        outcome=finished["outcome"],
        exit_code=finished.get("exit_code"),
        signal=finished.get("signal"),
        error=finished.get("error"),
        duration_s=float(finished.get("duration_s") or 0.0),
        next=finished.get("next", "done"),
        next_at=finished.get("next_attempt_at"),
        log_path=finished.get("log_path") or "",
        dlq_id=item.run_id if finished.get("next") == "dead_letter" else None,
    )


def still_ours(current: QueueItem, item: QueueItem) -> bool:
    return (
        current.state == "running"
        and current.attempt == item.attempt
        and current.run_id == item.run_id
        and current.host == item.host
        and current.pid == item.pid
    )
