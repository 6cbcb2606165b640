"""The supervisor's part of an attempt, in the supervisor's own process (supervisor.py forks
it): run the attempt under its limits, stop what is left of it, write its records, then have it
settled: by the tick, or by itself when the tick is gone or frozen. Writes are retried until they
land (a full disk), so the attempt's true outcome is never lost while its supervisor lives.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agentjobs import settle
from agentjobs.clock import parse
from agentjobs.errors import StateUnavailableError, UserError
from agentjobs.settle import AttemptResult, Ended
from agentjobs.store import AppliedJob, Claim, QueueItem, Store

if TYPE_CHECKING:
    from agentjobs.cancel import Watch
    from agentjobs.engine import Engine
    from agentjobs.progress import Reporter
    from agentjobs.runner import StopFlag

_T = TypeVar("_T")
_REOPENED: dict[tuple[int, int], Store] = {}
_IDENTITY: dict[int, dict[str, Any]] = {}


def handle(tick: Engine, request: dict[str, Any], fds: list[int], channel: Any) -> dict[str, Any]:
    """The supervisor's part (in its own process): run the attempt, stop what is left of
    it, append its records, then have it settled: by the tick, or by itself when the tick
    is gone or frozen. Writes are retried until they land (a full disk), so the attempt's
    true outcome is never lost while its supervisor lives."""
    from agentjobs.supervisor import Channel

    assert isinstance(channel, Channel)
    store = reopened(tick.store)  # nothing the tick's other threads may have locked
    claim = Claim(
        QueueItem.from_dict(request["item"]),
        AppliedJob.from_dict(request["job"], request["applied"]),
        store.hold_from(request["hold"], fds),
    )
    engine = dataclasses.replace(
        tick,
        store=store,
        stop=channel.stop,
        on_output=channel.output,
        say=channel.say,
        notifier=None,
        cancel=None,  # the tick's: a cancel reaches this process through the state
        _messages=[],
        _failures=[],
        _guard=threading.Lock(),
        _server=None,
    )
    try:
        return attempt(engine, claim, channel).to_dict()
    finally:
        if engine.notifier is not None:
            engine.notifier.close()


def attempt(engine: Engine, claim: Claim, channel: Any) -> AttemptResult:
    """Run the attempt, then record and settle how it ended; its progress goes once it is
    settled, its hold last."""
    from agentjobs.progress import Reporter

    item = claim.item
    progress: Reporter | None = None
    try:
        log_path = engine.store.log_path(item.run_id, item.attempt)
        progress = Reporter(
            engine.store,
            item.run_id,
            item.attempt,
            engine.clock.now,
            file=log_path.with_suffix(".progress"),  # the attempt's AGENTJOBS_PROGRESS
        )
        records = finish(engine, claim, run(engine, claim, progress))
        return settle_attempt(engine, claim, channel, records)
    finally:
        if progress is not None:
            progress.clear()
        claim.hold.release()


def run(engine: Engine, claim: Claim, progress: Reporter | None = None) -> Ended:
    """Run the attempt under its limits (attempt.py) and stop whatever it left behind;
    `progress` is kept while it runs."""
    from agentjobs.cancel import Watch
    from agentjobs.runner import AnyStop

    item, hold = claim.item, claim.hold
    # a person's cancel (cancel.py), seen in the state, stops the attempt as a shutdown would
    watch = Watch(engine.store, item)
    flags: list[tuple[StopFlag, Callable[[], str]]] = [
        (engine.stop, lambda: "stopped by shutdown"),
        (watch, watch.why),
    ]
    if hold.lost is not None:  # a lost lease stops the attempt like a shutdown would
        flags.append((hold.lost, lambda: hold.reason))
    flags[1] = (_Later(watch, progress), watch.why)
    try:
        ended = _run(engine, claim, AnyStop(*flags), progress)
    finally:
        watch.stop()
    cancel = watch.request
    if cancel is not None and ended.outcome != "succeeded":
        # a person's decision: the run ends here (never retried, never dead-lettered)
        by_itself = "" if ended.outcome == "interrupted" else f"; it had ended: {ended.outcome}"
        ended = dataclasses.replace(
            ended,
            outcome="cancelled",
            error=f"cancelled by {cancel.by}: {cancel.reason}{by_itself}",
            permanent=False,
            reset_at=None,
            cancel=cancel,
        )
    return ended


LATER_S = 0.5  # an attempt's look-outs start once it has run this long


class _Later:
    """The cancel `Watch` as the runner's stop flag, and the attempt's progress `Reporter`,
    started only once the attempt has run LATER_S: most attempts of commands end sooner, and
    then start no thread at all (two threads and a file per attempt cost about 1.4 ms, a
    sixth of a short run). The runner asks `is_set()` at least every 0.1 s, so a cancel is
    still seen within about LATER_S + `cancel.POLL_S`."""

    def __init__(self, watch: Watch, progress: Reporter | None) -> None:
        self.watch, self.progress = watch, progress
        self.at: float | None = time.monotonic() + LATER_S

    def is_set(self) -> bool:
        if self.at is not None and time.monotonic() >= self.at:
            self.at = None
            self.watch.start()
            if self.progress is not None:
                self.progress.start()
        return self.watch.is_set()


def _run(engine: Engine, claim: Claim, stop: StopFlag, progress: Reporter | None) -> Ended:
    """The attempt under `stop`, its end as the runner and the agent's judge saw it."""
    from agentjobs.attempt import run_attempt
    from agentjobs.pricing import price_table
    from agentjobs.runner import kill_descendants

    item, hold = claim.item, claim.hold
    log_path = engine.store.log_path(item.run_id, item.attempt)
    started_at = engine._now()

    def started(pid: int) -> None:
        hold.started(pid)  # a lease's renewals and fence, now that the group exists
        if claim.job.parsed.notify is not None:
            engine._notifier().ping(claim.job.spec["notify"], "start", item.run_id)
        record = engine._record(
            "attempt_started",
            item,
            claim.job,
            started_at=started_at,
            child_pid=pid,
            supervisor=identity(),
            log_path=str(log_path),
        )
        engine.store.append_records([record], engine.clock.now())

    agent = own = claim.job.parsed.agent
    if own is not None and item.fallback is not None and item.fallback < len(own.fallback):
        agent = own.fallback[item.fallback]  # the job's agent is held by a usage limit
    try:
        outcome = run_attempt(
            claim.job,
            item,
            log_path=log_path,
            stop=stop,
            on_start=started,
            on_output=engine.on_output,
            slot_env={"AGENTJOBS_SLOT": item.slot or ""},
            pass_fds=hold.fds,
            worktrees=(engine.store.local_dir / "worktrees").absolute(),
            prices=price_table(engine.store.config().get("pricing")) if agent else None,
            cap_usd=item.cap_usd,
            agent=agent,
            progress=progress,
            hold_key=engine.store.hold_key,
        )
    finally:
        if progress is not None:
            progress.stop()
    facts = outcome.agent
    if agent is not None:
        facts = {**(facts or {}), "limit_key": agent.key}
        if agent is not own and own is not None:
            facts["fallback"] = f"instead of {own.kind}: {item.fallback_reason}"
    kill_descendants(claim.job.parsed.kill_grace)
    ended = Ended(
        outcome=outcome.outcome,
        started_at=started_at,
        log_path=str(log_path),
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        error=outcome.error,
        output=outcome.output_tail,
        output_for_match=outcome.output_for_match,
        duration_s=outcome.duration_s,
        agent=facts,
        land=outcome.land,
        permanent=outcome.permanent,
        reset_at=outcome.reset_at,
    )
    fenced = hold.fenced_reason()
    if fenced is not None and ended.outcome != "succeeded":
        # stopped (by the runner or by its fence) because the lease was lost: the attempt
        # did not fail, it was cut short
        ended = dataclasses.replace(
            ended, outcome="interrupted", error=fenced, permanent=False, reset_at=None
        )
    return ended


def finish(engine: Engine, claim: Claim, ended: Ended) -> list[dict[str, Any]]:
    """The attempt's end records (`settle.finish_records`)."""
    now = engine.clock.now()
    return settle.finish_records(claim.item, claim.job, ended, now, engine._recorder())


def settle_attempt(
    engine: Engine, claim: Claim, channel: Any, ended: list[dict[str, Any]]
) -> AttemptResult:
    """Write the end records, then have the attempt settled: by the tick, else here."""
    appended = not engine.store.records_with_state
    report = {"records": ended, "appended": appended}
    if appended:
        # the records first, whoever settles: the true outcome is on disk before anything
        # else (on a shared store they go in with the state, atomically)
        def append() -> None:
            engine.store.append_records(ended, parse(ended[0]["finished_at"]))

        until_written(append, channel.stalled, engine.say)
    if channel.settled_by_tick(report):
        return settle.as_recorded(claim.item, ended[0])

    def settle_here() -> AttemptResult:
        return engine._settle_claimed(claim, report)[0]

    window = claim.hold.settle_window
    if window is None:
        return until_written(settle_here, channel.stalled, engine.say)
    # Across hosts the database may be briefly away (a restart, a failover): the transaction
    # is retried for a lease (at least 10 s). Should another host have recorded the attempt
    # `lost` meanwhile, `settle_here` sees that and records nothing.
    return retry_while_leased(settle_here, window, engine.say)


def retry_while_leased(step: Callable[[], _T], window: float, say: Callable[[str], None]) -> _T:
    """`step()`, again on an outage (`StateUnavailableError`) for up to `window` seconds."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

    def before_sleep(state: Any) -> None:
        say(f"cannot record the attempt yet ({state.outcome.exception()}); retrying")

    for attempt in Retrying(
        stop=stop_after_delay(window),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        retry=retry_if_exception_type(StateUnavailableError),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return step()
    raise AssertionError("unreachable")  # reraise=True: the last error propagates


def until_written(
    step: Callable[[], _T], stalled: Callable[[str], None], say: Callable[[str], None]
) -> _T:
    """`step()` until it succeeds: a write that fails (a full disk, a read-only remount, the
    state lock held for long) is tried again with backoff (at most a minute apart) for as long
    as this supervisor lives. What it writes is one small value held in memory meanwhile; the
    first failure is told to the tick (`stalled`), which stops waiting."""
    delay = 0.5
    told = False
    while True:
        try:
            return step()
        except UserError as exc:
            if not told:
                told = True
                stalled(str(exc))
                say(f"cannot record the attempt yet ({exc}); retrying")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)


def reopened(store: Store) -> Store:
    """`store` reopened once per supervisor process (a supervisor runs attempt after attempt):
    the copy a fork inherited may hold a lock or a connection of the tick's other threads."""
    mine = (os.getpid(), id(store))
    if mine not in _REOPENED:
        _REOPENED.clear()  # what an ancestor process reopened is not ours
        _REOPENED[mine] = store.reopened()
    return _REOPENED[mine]


def identity() -> dict[str, Any]:
    """This process as (pid, start time in clock ticks since boot, boot id): unlike a pid alone,
    never the same for two processes, even after a pid is reused or the machine restarts. (Read
    once per process: a supervisor runs attempt after attempt.)"""
    from agentjobs.runner import process_identity

    pid = os.getpid()
    if pid not in _IDENTITY:
        _IDENTITY.clear()
        _IDENTITY[pid] = process_identity(pid)
    return dict(_IDENTITY[pid])
