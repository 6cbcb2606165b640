"""One tick: recover orphans, enqueue due slots, claim by priority under locks, run, record.

State changes happen in short store transactions (the state lock is never held while a job runs);
lock keys and concurrency slots are `flock`s held for the length of an attempt and inherited by
its processes (locks.py). The order inside each transaction is: append the run records, then let
the transaction write the runtime, so a crash can duplicate a record but never lose one, and a
slot's enqueue and its job's marker advance are one atomic write (exactly-once firing).
"""

from __future__ import annotations

import dataclasses
import operator
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from agentjobs import locks
from agentjobs.clock import Clock, iso, parse
from agentjobs.errors import StateUnavailableError, UserError
from agentjobs.records import new_ulid
from agentjobs.store import AppliedJob, AttemptSummary, JobState, QueueItem, Runtime, Store

if TYPE_CHECKING:
    from agentjobs.notify import Notifier
    from agentjobs.schedule import SlotPlan
    from agentjobs.spec import RetryPolicy
    from agentjobs.store.postgres import Lease, PostgresStore
    from agentjobs.supervisor import ForkServer, Lane

_T = TypeVar("_T")
DEFAULT_LOCK_TIMEOUT = 30.0
# The longest a usage-limit hold (and its retry) may lie ahead: agents' weekly limits reset within
# a week; the hold adds up to a minute (engine._finish). Further ahead, the clock went back.
MAX_HOLD_S = 7 * 86400.0 + 60.0
ORPHAN_REASON = "the runner stopped before the attempt finished (killed or machine restarted)"


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
        return self.outcome == "succeeded"


@dataclass(frozen=True, slots=True)
class TickResult:
    attempts: tuple[AttemptResult, ...] = ()
    enqueued: int = 0
    skipped: int = 0
    recovered: int = 0
    interrupted: bool = False
    messages: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.attempts)


class _Held(Protocol):
    """A lock key or concurrency slot held for an attempt: a flock (`locks.HeldLock`, its `fd`
    passed to the attempt's processes) or a lease row (`postgres.Lease`, no fd)."""

    @property
    def fd(self) -> int | None: ...

    def release(self) -> None: ...


@dataclass(slots=True)
class _Claim:
    item: QueueItem
    applied: AppliedJob
    key: _Held
    slot: _Held


def default_host() -> str:
    """This runner's id: `AGENTJOBS_HOST`, else the host name."""
    return os.environ.get("AGENTJOBS_HOST") or socket.gethostname()


@dataclass
class Engine:
    """The scheduler for one state store. `tick()` is one pass; `run_now()` is `agentjobs run`."""

    store: Store
    clock: Clock = field(default_factory=Clock)
    host: str = field(default_factory=default_host)
    labels: frozenset[str] = frozenset()  # this host's labels, matched against `runs_on`
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    max_concurrent: int | None = None  # None: the applied global config's (default 2)
    stop: threading.Event = field(default_factory=threading.Event)
    on_output: Callable[[bytes], None] | None = None  # live output (run in the foreground)
    say: Callable[[str], None] = lambda _line: None  # progress and retry log lines
    notifier: Notifier | None = None  # None: made on first use
    _messages: list[str] = field(default_factory=list)
    _failures: list[UserError] = field(default_factory=list)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _server: ForkServer | None = None  # where this engine's supervisors are forked from
    _background: int = 0  # a daemon pass's workers still running (`daemon_pass`)

    # -- small helpers -------------------------------------------------------------------------

    def _notifier(self) -> Notifier:
        """Events go to the store's outbox as they happen (with their records); `deliver()`
        (the tick's end, `_deliver`) sends what is due, bounded in time (notify.py)."""
        if self.notifier is None:
            from agentjobs.notify import Notifier

            self.notifier = Notifier(self.store, self.clock.now, self._tell)
        return self.notifier

    def _deliver(self) -> None:
        """Deliver due notifications: this pass's and those earlier passes left pending."""
        if self.notifier is not None or self.store.outbox_counts()[0]:
            self._notifier().deliver()

    def _notify(
        self, event: str, item: QueueItem, applied: AppliedJob | None, **fields: Any
    ) -> None:
        notify = applied.spec.get("notify") if applied else None
        if not notify:
            return
        payload = {
            "event": event,
            "job": item.job,
            "run_id": item.run_id,
            "attempt": item.attempt,
            "time": self._now(),
            "host": self.host,
            **fields,
        }
        self._notifier().event(notify, payload)

    def _now(self) -> str:
        return iso(self.clock.now()) or ""

    def _tell(self, line: str) -> None:
        with self._guard:
            self._messages.append(line)
        self.say(line)

    def _slots(self) -> int:
        if self.max_concurrent is None:  # decided once per engine: the config is read once
            self.max_concurrent = int(self.store.config().get("max_concurrent", 2))
        return self.max_concurrent

    def _workers(self) -> int:
        """How many attempts this process runs at once (the cluster's and this host's limit)."""
        per_host = self.store.config().get("max_concurrent_per_host")
        return max(1, min(self._slots(), int(per_host or self._slots())))

    def _shared(self) -> PostgresStore | None:
        """The store when it is shared between hosts (leases, not flocks)."""
        if not self.store.shared:
            return None
        from agentjobs.store.postgres import PostgresStore

        assert isinstance(self.store, PostgresStore)
        return self.store

    def _runs_here(self, applied: AppliedJob) -> str | None:
        """Why this host may not run the job (`runs_on` labels, workdir), or None."""
        wanted = applied.spec.get("runs_on") or ()
        missing = [label for label in wanted if label not in self.labels]
        if missing:
            return f"host {self.host} lacks the label(s) {', '.join(missing)} (runs_on)"
        workdir = applied.spec.get("workdir")
        if self.store.shared and workdir and not os.path.isdir(workdir):
            return f"workdir {workdir} does not exist on host {self.host}"
        return None

    def _record(
        self, event: str, item: QueueItem, applied: AppliedJob | None, **fields: Any
    ) -> dict[str, Any]:
        spec = applied.spec if applied else {}
        record: dict[str, Any] = {
            "event": event,
            "time": self._now(),
            "run_id": item.run_id,
            "job": item.job,
            "attempt": item.attempt,
            "trigger": item.trigger,
            "slot": item.slot,
            "queued_at": item.queued_at,
            "lock_key": item.lock_key,
            "priority": item.priority,
            "host": self.host,
            "pid": os.getpid(),
            "spec_hash": applied.spec_hash if applied else None,
            "git_commit": applied.git_commit if applied else None,
            "corrective": item.corrective,
        }
        if item.replay_of:
            record["replay_of"] = item.replay_of
        if spec.get("secrets"):
            record["secrets_redacted"] = True
        record.update(fields)
        return record

    # -- the hot path --------------------------------------------------------------------------

    def _has_work(self, runtime: Runtime, now: str) -> bool:
        """Whether a tick must do anything at all: compares stored strings only."""
        if runtime.applied_version != self.store.applied_version():
            return True
        return bool(runtime.queue) or _any_due(runtime, now, check_clock=not self.store.shared)

    def _must_prepare(self, shared: PostgresStore, runtime: Runtime) -> bool:
        """Across hosts, whether this tick needs the exclusive whole-state transaction (due
        slots, needs, an apply, a lifted hold, an orphan) or only claims what is queued:
        hosts that only claim do not queue behind each other."""
        now = self._now()
        if runtime.applied_version != shared.applied_version():
            return True
        held = any(until <= now for until in runtime.holds.values())
        if held or _any_due(runtime, now, check_clock=False):
            return True
        running = [i for i in runtime.queue.values() if i.state == "running"]
        return bool(running) and shared.unleased_running() > 0

    # -- one tick ------------------------------------------------------------------------------

    def tick(self) -> TickResult:
        prepared = self._begin_pass()
        if prepared is None:
            return TickResult(messages=tuple(self._messages))
        recovered, enqueued, skipped = prepared
        try:
            attempts = self._run_queue()
        finally:
            self._close_fork_server()
        self._end_pass()
        return TickResult(
            attempts=tuple(attempts),
            enqueued=enqueued,
            skipped=skipped,
            recovered=recovered,
            interrupted=self.stop.is_set(),
            messages=tuple(self._messages),
        )

    def _begin_pass(self) -> tuple[int, int, int] | None:
        """A pass's decisions (recovered, enqueued, skipped), or None when it has no work."""
        runtime = self.store.runtime()
        if not self._has_work(runtime, self._now()):
            self._deliver()
            return None
        shared = self._shared()
        if shared is not None:
            shared.see_host(self.host, self.labels)
        if shared is None or self._must_prepare(shared, runtime):
            return self._prepare()
        return 0, 0, 0

    def _end_pass(self) -> None:
        """Alerts, notifications, retention: what every pass does once it has decided."""
        from agentjobs import alerts, retention

        now = self.clock.now()
        targets = dict(self.store.config().get("defaults", {})).get("notify")
        for event in alerts.check(self.store, now):
            if targets:
                self._notifier().event({**targets, "events": ["alert"]}, event)
        self._deliver()  # bounded: a few seconds whatever the targets do
        if not self.stop.is_set() and retention.due(self.store, now):
            retention.collect(self.store, now)  # at most once a day

    def daemon_pass(self, workers: Workers) -> None:
        """One pass of the daemon: the decisions `tick()` makes from the same state (recover,
        enqueue what is due, or skip it with reason `overlap` while a run of its job is in
        flight), then workers for what can be claimed, started in the background up to this
        host's limit (`max_concurrent`, `max_concurrent_per_host`) counting those of earlier
        passes still running. Unlike `tick()` it does not wait for the attempts: a pass must
        happen when a slot is due even while attempts run (issue 10 item 12). Claims go
        through `_claim`, as a tick's do; a stop (`self.stop`) reaches running attempts through
        their workers' `_execute`."""
        workers.raise_failure()
        if self.stop.is_set():  # the last pass, once the workers are done: as a stopped tick
            self._end_pass()
            return
        if self._begin_pass() is None:
            return
        if not self.stop.is_set():
            count = max(0, self._workers() - workers.running())
            with self._guard:
                self._background += count  # counted first: the last one closes the fork server
            for _ in range(count):
                workers.start(self._background_worker)
        self._end_pass()

    def _background_worker(self, workers: Workers) -> None:
        """A daemon's worker: `_worker`, telling `workers` of each attempt's end. The pass's
        last worker closes the pass's fork server (the supervisors it forked live on), as a
        tick closes its own: a server that died takes no later pass's attempts with it."""
        results: list[AttemptResult] = []  # the records say what ran; nobody reads these
        try:
            self._worker(results, workers.attempt_ended)
        finally:
            with self._guard:
                failures, self._failures = list(self._failures), []
                self._background -= 1
                last = self._background == 0
            if last:
                self._close_fork_server()
            workers.done(failures, worked=bool(results))

    def _prepare(self) -> tuple[int, int, int]:
        """Recover orphans, reconcile states with specs, enqueue what is due (one transaction).

        The orphans and their finish records are found first, without the state lock (the
        lookup reads records); the transaction only re-checks and settles them."""
        orphans = self._orphans()
        with self.store.transaction(self.lock_timeout) as runtime:
            applied = self.store.applied()
            now = self.clock.now()
            records: list[dict[str, Any]] = []
            if runtime.applied_version != self.store.applied_version():
                self._reconcile_states(runtime, applied, now)
            stamp = iso(now) or ""
            self._check_clock(runtime, applied, now)
            for key in [k for k, until in runtime.holds.items() if until <= stamp]:
                del runtime.holds[key]  # the usage limit has lifted
            recovered = self._recover_orphans(runtime, applied, now, records, orphans)
            self._drop_deleted(runtime, applied, records)
            enqueued, skipped = self._enqueue_due(runtime, applied, now, records)
            enqueued += self._enqueue_needs(runtime, applied, now)
            self.store.append_records(records, now)
        return recovered, enqueued, skipped

    def _reconcile_states(
        self, runtime: Runtime, applied: Mapping[str, AppliedJob], now: datetime
    ) -> None:
        """After an apply that crashed between its two writes: states follow the specs."""
        from agentjobs.reconcile import fresh_state
        from agentjobs.spec import job_from_dict

        for name, job in applied.items():
            state = runtime.jobs.get(name)
            if state is None or state.schedule_hash != job.schedule_hash:
                runtime.jobs[name] = fresh_state(job_from_dict(dict(job.spec)), now, state)
        for name in list(runtime.jobs):
            if name not in applied:
                del runtime.jobs[name]
        runtime.applied_version = self.store.applied_version()

    def _orphaned(self, item: QueueItem) -> bool:
        """Whether a running item's attempt has nobody left to finish it."""
        shared = self._shared()
        if shared is not None:
            # across hosts the lease is the only truth: renewed, the attempt lives
            return not shared.attempt_leased(item.run_id, item.attempt)
        # The key is held from the claim until the attempt is settled, by the claiming tick
        # and then by the attempt's supervisor (and the attempt's processes): a free key means
        # nobody is left to finish it, whatever host name or pid the item names (a container
        # restarted under a new name, a reused pid).
        return locks.is_free(locks.key_file(self.store.locks_dir, item.lock_key))

    def _orphans(self) -> dict[str, tuple[QueueItem, dict[str, Any] | None]]:
        """The orphans in a snapshot of the runtime, each with its `attempt_finished` record if
        one was written, all looked up in one pass from where the records ended at their claims
        (issue 10, item 7): no state lock is held, and the cost does not grow with history.
        A key is found free before the records are read: a supervisor appends the finish before
        it lets go of the key, so a finish written at all is found."""
        snapshot = self.store.runtime()
        running = [i for i in snapshot.queue.values() if i.state == "running"]
        orphans = [item for item in running if self._orphaned(item)]
        if not orphans:
            return {}
        # what settling them imports (the retry policy's backoff, the next `every` slot),
        # imported before the state lock is taken: ~0.1 s that would hold it otherwise
        import tenacity  # noqa: F401

        import agentjobs.retry
        import agentjobs.schedule
        import agentjobs.spec  # noqa: F401

        finished = self.store.finished_records(orphans, self.clock.now())
        return {i.id: (i, finished.get((i.run_id, i.attempt))) for i in orphans}

    def _recover_orphans(
        self,
        runtime: Runtime,
        applied: Mapping[str, AppliedJob],
        now: datetime,
        records: list[dict[str, Any]],
        orphans: Mapping[str, tuple[QueueItem, dict[str, Any] | None]],
    ) -> int:
        """Settle the orphans `_orphans()` found that still are (inside the transaction: the
        same attempt still running, its key still free). One that became an orphan since is
        left to the next tick."""
        count = 0
        for item_id, (seen, recorded) in orphans.items():
            item = runtime.queue.get(item_id)
            if item is None or not _still_ours(item, seen) or not self._orphaned(item):
                continue  # settled meanwhile (its supervisor, another tick)
            count += 1
            if recorded is not None:
                # The attempt finished and was recorded; nobody settled it (its supervisor
                # was killed in between). Settle it as recorded: never run it again, never
                # call it lost.
                self._settle(runtime, item, applied.get(item.job), recorded)
                continue
            self._tell(
                f"{item.job}: run {item.run_id} attempt {item.attempt} was lost: {ORPHAN_REASON}"
            )
            ended = self._decide(
                item,
                applied.get(item.job),
                now,
                outcome="lost",
                exit_code=None,
                signal=None,
                error=ORPHAN_REASON,
                output="",
                started_at=item.started_at or iso(now) or "",
                duration_s=None,
                log_path=str(self.store.log_path(item.run_id, item.attempt)),
            )
            records.extend(ended)
            self._settle(runtime, item, applied.get(item.job), ended[0])
        return count

    def _check_clock(
        self, runtime: Runtime, applied: Mapping[str, AppliedJob], now: datetime
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
        if self.store.shared:
            return
        stamp = iso(now) or ""
        fixed = {"next-run times": 0, "queued runs": 0, "usage-limit holds": 0}
        for name, state in list(runtime.jobs.items()):
            job = applied.get(name)
            if job is None or not job.spec.get("schedule") or state.next_due is None:
                continue
            if state.next_due_max_gap is None:  # a state written before the field existed
                from agentjobs.schedule import max_gap
                from agentjobs.spec import Schedule

                gap = max_gap(name, Schedule(**job.spec["schedule"]))
                state = runtime.jobs[name] = dataclasses.replace(state, next_due_max_gap=gap)
            if not _implausible_due(state, stamp, {}):
                continue
            runtime.jobs[name] = _recompute_due(name, state, job, now)
            fixed["next-run times"] += 1
        moved: dict[str, str] = {}  # a retry's old not_before -> its new one (for its hold)
        for item in list(runtime.queue.values()):
            if item.state != "queued" or item.not_before <= stamp:
                continue
            origin = item.history[-1].finished_at if item.history else item.queued_at
            longest = 0.0  # a scheduled, manual or replayed run was due when it was queued
            if item.trigger == "retry":
                longest = _longest_wait(item, applied.get(item.job))
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
            self._tell(
                f"the clock is behind times stored in the state (a tick ran while it was ahead, "
                f"or it was set back); brought back within their schedules from {stamp}: {what}"
            )

    def _drop_deleted(
        self, runtime: Runtime, applied: Mapping[str, AppliedJob], records: list[dict[str, Any]]
    ) -> None:
        for item in list(runtime.queue.values()):
            if item.job not in applied and item.state == "queued":
                records.append(
                    self._record("slot_skipped", item, None, reason="deleted", outcome="skipped")
                )
                del runtime.queue[item.id]

    def _enqueue_due(
        self,
        runtime: Runtime,
        applied: Mapping[str, AppliedJob],
        now: datetime,
        records: list[dict[str, Any]],
    ) -> tuple[int, int]:
        from agentjobs.schedule import plan_slots
        from agentjobs.spec import Schedule

        stamp = iso(now) or ""
        enqueued = skipped = 0
        for name, state in sorted(runtime.jobs.items()):
            job = applied.get(name)
            if job is None or state.paused or state.next_due is None or state.next_due > stamp:
                continue
            raw = job.spec.get("schedule")
            if not raw or not job.spec.get("enabled", True):
                runtime.jobs[name] = dataclasses.replace(state, next_due=None)
                continue
            schedule = Schedule(**raw)
            plan = plan_slots(
                name,
                schedule,
                last_slot=parse(state.last_slot) if state.last_slot else None,
                next_due=parse(state.next_due),
                now=now,
            )
            if plan.warning:
                self._tell(f"{name}: {plan.warning}")
            if plan.skipped is not None:  # one record however many slots (issue 10, item 7)
                records.append(self._skip_record(name, job, plan.skipped.last, "", now, plan))
                skipped += plan.skipped.count
            # Overlap is judged against runs in flight before this tick: the slots of one
            # catch-up batch (catchup: all) all queue up.
            before = {i.id for i in runtime.items_of(name)}
            for slot, trigger in plan.run:
                outcome = self._enqueue_slot(runtime, job, slot, trigger, now, before)
                if outcome is None:
                    enqueued += 1
                else:
                    record = self._skip_record(name, job, slot, outcome, now)
                    records.append(record)
                    skipped += 1
                    if outcome == "overlap" and job.spec.get("notify"):
                        self._notifier().event(
                            job.spec["notify"],
                            {
                                "event": "skipped_overlap",
                                "job": name,
                                "slot": record["slot"],
                                "run_id": record["run_id"],
                                "time": record["time"],
                                "host": self.host,
                                "error": "the previous run was still running at this slot",
                            },
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

    def _skip_record(
        self,
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
            priority=job.spec.get("priority", "normal"),
            lock_key=job.spec["lock"],
            queued_at=iso(now) or "",
            not_before=iso(now) or "",
            slot=iso(slot),
            attempt=0,
        )
        return self._record("slot_skipped", stub, job, reason=reason, outcome="skipped", **fields)

    def _enqueue_slot(
        self,
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
            if job.spec.get("overlap", "skip") == "skip":
                return "overlap"
            if any(i.state == "queued" for i in in_flight):
                return "overlap"  # queue: at most one pending slot
        state = runtime.jobs[name]
        if state.needs and not _needs_met(runtime, name, state):
            return "needs"
        stamp = iso(now) or ""
        run_id = new_ulid()
        runtime.queue[item_id] = QueueItem(
            id=item_id,
            run_id=run_id,
            job=name,
            trigger=trigger,
            priority=job.spec.get("priority", "normal"),
            lock_key=_lock_key(job.spec, run_id),
            queued_at=stamp,
            not_before=stamp,
            slot=iso(slot),
        )
        return None

    def _enqueue_needs(
        self, runtime: Runtime, applied: Mapping[str, AppliedJob], now: datetime
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
                or job.spec.get("schedule")
                or not job.spec.get("enabled", True)
                or not _needs_met(runtime, name, state)
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
                priority=job.spec.get("priority", "normal"),
                lock_key=_lock_key(job.spec, run_id),
                queued_at=stamp,
                not_before=stamp,
            )
            count += 1
        return count

    # -- claiming and running ------------------------------------------------------------------

    def _claim(self, only: str | None = None) -> _Claim | str | None:
        """Take the best runnable item: its lock key and a concurrency slot, marked running.

        Returns the claim, None when nothing can run now, or (with `only`) a message saying
        what holds that item back.
        """
        if self.store.shared:
            return self._claim_shared(only)
        with self.store.transaction(self.lock_timeout) as runtime:
            return self._claim_in(runtime, self.store.applied(), only)

    def _claim_shared(self, only: str | None) -> _Claim | str | None:
        """`_claim` across hosts: leases and `SKIP LOCKED` in the database (postgres.py)."""
        from agentjobs.store.postgres import Claimed, ClaimRequest

        store = self._shared()
        assert store is not None
        applied = store.applied()
        now = self._now()

        def refuse(item_id: str, name: str, context: Runtime) -> str | None:
            job = applied.get(name)
            if job is None:
                return "its job is no longer applied"
            if only is not None:  # `agentjobs run JOB`: a person asked for it, as with files
                why = self._runs_here(job)
                return None if why is None else f"host: {why}"
            if not job.spec.get("enabled", True):
                return f"job {name} is disabled"
            state = context.jobs.get(name)
            if state is not None and state.paused:
                return f"job {name} is paused"
            limit = self._limit_key(job)
            if limit is not None and context.holds.get(limit, "") > now:
                return f"held: {limit} usage limit until {context.holds[limit]}"
            why = self._runs_here(job)
            return None if why is None else f"host: {why}"

        per_host = store.config().get("max_concurrent_per_host")
        claimed = store.claim(
            ClaimRequest(
                host=self.host,
                now=now,
                only=only,
                refuse=refuse,
                slots=self._slots(),
                host_slots=int(per_host) if per_host else None,
                note=lambda item: (
                    f"run {item.run_id} (job {item.job}, attempt {item.attempt}, "
                    f"pid {os.getpid()}, host {self.host})"
                ),
                timeout=self.lock_timeout,
            )
        )
        if isinstance(claimed, Claimed):
            return _Claim(claimed.item, applied[claimed.item.job], claimed.key, claimed.slot)
        return claimed

    def _claim_in(
        self,
        runtime: Runtime,
        applied: Mapping[str, AppliedJob],
        only: str | None = None,
        slot: locks.HeldLock | None = None,
    ) -> _Claim | str | None:
        """`_claim` inside a transaction that is already open; with `slot`, a concurrency slot
        this worker already holds (kept when nothing is claimed)."""
        own_slot = slot
        now = self._now()
        busy = {i.lock_key for i in runtime.queue.values() if i.state == "running"}
        if only is not None:
            item = runtime.queue.get(only)
            if item is None or item.state != "queued":
                return None
            candidates: Iterable[QueueItem] = [item]
        else:
            held = {n for n, state in runtime.jobs.items() if state.paused}
            held.update(n for n, job in applied.items() if not job.spec.get("enabled", True))
            limited = {k for k, until in runtime.holds.items() if until > now}
            if limited:  # a usage limit holds every job that shares it until the reset
                held.update(n for n, job in applied.items() if self._limit_key(job) in limited)
            eligible = [
                i
                for i in runtime.queue.values()
                if i.state == "queued"
                and i.not_before <= now
                and i.job in applied
                and i.lock_key not in busy
                and i.job not in held
            ]
            candidates = _in_order(eligible)
        for item in candidates:
            if item.lock_key in busy and only is None:
                continue
            if only is None and self._runs_here(applied[item.job]) is not None:
                continue  # `runs_on` labels this host lacks (judged only for the next candidate)
            if slot is None:
                slot = locks.try_slot(self.store.locks_dir, self._slots())
                if slot is None:
                    return None if only is None else "every concurrency slot is in use"
            key = locks.try_key(self.store.locks_dir, item.lock_key)
            if key is None:
                busy.add(item.lock_key)
                if only is not None:
                    slot.release()
                    return self._holder_message(item.lock_key, runtime)
                continue
            key.note(
                f"run {item.run_id} (job {item.job}, attempt {item.attempt}, "
                f"pid {os.getpid()}, host {self.host})"
            )
            running = dataclasses.replace(
                item,
                state="running",
                started_at=now,
                host=self.host,
                pid=os.getpid(),
                # where this attempt's records will be: recovery reads from here (a stat)
                records_at=self.store.records_mark(self.clock.now()),
            )
            runtime.queue[item.id] = running
            state = runtime.jobs.get(item.job)
            if state is not None:
                runtime.jobs[item.job] = dataclasses.replace(
                    state, last_started=now, last_run_id=item.run_id
                )
            return _Claim(running, applied[item.job], key, slot)
        if slot is not None and slot is not own_slot:
            slot.release()
        return None

    @staticmethod
    def _limit_key(applied: AppliedJob | None) -> str | None:
        """Jobs with the same key share an agent account's usage limit (default: the kind)."""
        agent = applied.spec.get("agent") if applied else None
        if not agent:
            return None
        return str(agent.get("limit_key") or agent.get("kind"))

    def _holder_message(self, key: str, runtime: Runtime) -> str:
        holder = locks.holder(locks.key_file(self.store.locks_dir, key))
        running = [i for i in runtime.queue.values() if i.state == "running" and i.lock_key == key]
        if running:
            item = running[0]
            return (
                f"lock key {key} is held by run {item.run_id} (job {item.job}, attempt "
                f"{item.attempt}, started {item.started_at})"
            )
        return f"lock key {key} is held by {holder or 'another process'}"

    def _execute(
        self, claim: _Claim, claim_next: bool = False, lane: Lane | None = None
    ) -> tuple[AttemptResult, _Claim | None]:
        """Run a claimed attempt under a supervisor process of `lane` (supervisor.py; a lane of
        its own when none is given) and settle it from what the supervisor reports; with
        `claim_next`, claim the next runnable item (in the same transaction when its key is
        free).

        The supervisor outlives this tick: should the tick die or freeze before it settles,
        the supervisor settles the attempt itself."""
        from agentjobs import supervisor

        if lane is None:
            own = supervisor.Lane(self._fork_server())
            try:
                return self._execute(claim, claim_next, own)
            finally:
                own.close()
        item = claim.item
        settled: list[tuple[AttemptResult, _Claim | None]] = []

        def let_go() -> None:
            # The supervisor holds the attempt's key now (an inherited descriptor): this
            # process drops its copy at once, so a tick that is stopped (SIGSTOP) never keeps
            # a key held once its attempt is settled. The concurrency slot stays this worker's
            # (the next claim takes it over).
            if not self.store.shared:
                claim.key.release()

        def settle(finished: dict[str, Any]) -> bool:
            try:
                settled.append(self._settle_claimed(claim, finished, claim_next))
            except UserError as exc:
                self._tell(
                    f"{item.job}: run {item.run_id} attempt {item.attempt}: cannot record it "
                    f"yet ({exc}); its supervisor keeps trying"
                )
                return False
            return True

        lease = cast("Lease", claim.key) if self.store.shared else None
        request = {
            "item": item.to_dict(),
            "job": claim.applied.name,
            "applied": claim.applied.to_dict(),
            "key": None if lease else str(cast(locks.HeldLock, claim.key).path),
            "slot": None if lease else str(cast(locks.HeldLock, claim.slot).path),
            "lease": {"token": lease.token, "duration": lease.duration} if lease else None,
        }
        try:
            raw = supervisor.supervise(
                lane,
                request,
                keep_fds=tuple(fd for fd in (claim.key.fd, claim.slot.fd) if fd is not None),
                after_fork=let_go,
                settle=settle,
                stop=self.stop,
                say=self._tell,
                on_output=self.on_output,
            )
        except supervisor.FinishPending as exc:
            raise UserError(
                f"{exc}; the attempt's supervisor keeps trying to record run {item.run_id} "
                "and does so once the problem is fixed"
            ) from None
        except supervisor.SupervisorLost as exc:
            self._tell(
                f"{item.job}: run {item.run_id} attempt {item.attempt}: {exc}; the next tick "
                "recovers it"
            )
            raw = _result_dict(
                AttemptResult(
                    job=item.job,
                    run_id=item.run_id,
                    attempt=item.attempt,
                    trigger=item.trigger,
                    outcome="lost",
                    exit_code=None,
                    signal=None,
                    error=str(exc),
                    duration_s=0.0,
                    next="recover",
                    next_at=None,
                    log_path=str(self.store.log_path(item.run_id, item.attempt)),
                )
            )
        result, following = settled[0] if settled else (AttemptResult(**raw), None)
        if following is None and not self.store.shared:
            claim.slot.release()
            if claim_next and not self.stop.is_set():
                candidate = self._claim()  # the key just freed, or one that was busy
                following = candidate if isinstance(candidate, _Claim) else None
        elif following is None and claim_next and not self.stop.is_set():
            candidate = self._claim()
            following = candidate if isinstance(candidate, _Claim) else None
        return result, following

    def _settle_claimed(
        self, claim: _Claim, finished: Mapping[str, Any], claim_next: bool = False
    ) -> tuple[AttemptResult, _Claim | None]:
        """Settle an attempt from what its supervisor reports (`records`, its `_decide`, and
        whether they are `appended` yet), unless somebody already did: its supervisor, when
        the tick was frozen; another host, when the lease was lost. Records not yet appended
        (a shared store: records and state in one transaction) go in with the state. The tick
        and the supervisor both settle this way; on the file backend the tick also claims the
        next item with this worker's slot, in the same write."""
        item = claim.item
        ended: list[dict[str, Any]] = list(finished["records"])
        with self.store.transaction(self.lock_timeout) as runtime:
            found = runtime.queue.get(item.id)
            if found is None or not _still_ours(found, item):
                if finished["appended"]:
                    return _as_recorded(item, ended[0]), None  # settled by the other side
                self._tell(
                    f"{item.job}: run {item.run_id} attempt {item.attempt} lost its lease; "
                    "another host recorded it, this host records nothing"
                )
                return _abandoned(item, ended[0]), None
            now = self.clock.now()
            if not finished["appended"]:
                self.store.append_records(ended, now)
            result = self._settle(runtime, found, claim.applied, ended[0])
            applied = self.store.applied()
            self._enqueue_needs(runtime, applied, now)
            following = None
            if claim_next and not self.stop.is_set() and not self.store.shared:
                candidate = self._claim_in(runtime, applied, slot=cast(locks.HeldLock, claim.slot))
                following = candidate if isinstance(candidate, _Claim) else None
        return result, following

    def _fork_server(self) -> ForkServer:
        with self._guard:
            if self._server is None:
                from agentjobs.supervisor import ForkServer

                self._server = ForkServer(self._supervised)
            return self._server

    def _close_fork_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _supervised(self, request: dict[str, Any], fds: list[int], channel: Any) -> dict[str, Any]:
        """The supervisor's part (in its own process): run the attempt, stop what is left of
        it, append its records, then have it settled: by the tick, or by itself when the tick
        is gone or frozen. Writes are retried until they land (a full disk), so the attempt's
        true outcome is never lost while its supervisor lives."""
        from agentjobs.supervisor import Channel

        assert isinstance(channel, Channel)
        store = _reopened(self.store)  # nothing the tick's other threads may have locked
        item = QueueItem.from_dict(request["item"])
        applied = AppliedJob.from_dict(request["job"], request["applied"])
        lease: Lease | None = None
        if request["lease"]:
            from agentjobs.store.postgres import Lease

            lease = Lease(cast("PostgresStore", store), **request["lease"])
            claim = _Claim(item, applied, lease, lease)
        else:
            key = locks.HeldLock(Path(request["key"]), fds[0])
            claim = _Claim(item, applied, key, locks.HeldLock(Path(request["slot"]), fds[1]))
        engine = dataclasses.replace(
            self,
            store=store,
            stop=channel.stop,
            on_output=channel.output,
            say=channel.say,
            notifier=None,
            _messages=[],
            _failures=[],
            _guard=threading.Lock(),
            _server=None,
        )
        try:
            return _result_dict(engine._attempt(claim, lease, channel))
        finally:
            if engine.notifier is not None:
                engine.notifier.close()

    def _attempt(self, claim: _Claim, lease: Lease | None, channel: Any) -> AttemptResult:
        from agentjobs.attempt import run_attempt
        from agentjobs.runner import AnyStop, StopFlag, kill_descendants

        item = claim.item
        log_path = self.store.log_path(item.run_id, item.attempt)
        started_at = self._now()
        stop: StopFlag = self.stop
        if lease is not None:  # a lost lease stops the attempt like a shutdown would
            stop = AnyStop(
                (self.stop, lambda: "stopped by shutdown"), (lease.lost, lambda: lease.reason)
            )

        def started(pid: int) -> None:
            if lease is not None:
                lease.start(pid)  # renewals and the fence, now that the group exists
            if claim.applied.spec.get("notify"):
                self._notifier().ping(claim.applied.spec.get("notify"), "start", item.run_id)
            self.store.append_records(
                [
                    self._record(
                        "attempt_started",
                        item,
                        claim.applied,
                        started_at=started_at,
                        child_pid=pid,
                        supervisor=_identity(),
                        log_path=str(log_path),
                    )
                ],
                self.clock.now(),
            )

        try:
            outcome = run_attempt(
                claim.applied,
                item,
                log_path=log_path,
                stop=stop,
                on_start=started,
                on_output=self.on_output,
                slot_env={"AGENTJOBS_SLOT": item.slot or ""},
                pass_fds=tuple(fd for fd in (claim.key.fd, claim.slot.fd) if fd is not None),
                worktrees=self.store.local_dir / "worktrees",
            )
            kill_descendants(float(claim.applied.spec.get("kill_grace", 10.0)))
            fenced = lease.fenced_reason() if lease is not None else None
            if fenced is not None and outcome.outcome != "succeeded":
                # stopped (by the runner or by its fence) because the lease was lost: the
                # attempt did not fail, it was cut short
                outcome = dataclasses.replace(
                    outcome, outcome="interrupted", error=fenced, permanent=False, reset_at=None
                )
            ended = self._decide(
                item,
                claim.applied,
                self.clock.now(),
                outcome=outcome.outcome,
                exit_code=outcome.exit_code,
                signal=outcome.signal,
                error=outcome.error,
                output=outcome.output_tail,
                started_at=started_at,
                duration_s=outcome.duration_s,
                log_path=str(log_path),
                output_for_match=outcome.output_for_match,
                agent=outcome.agent,
                permanent=outcome.permanent,
                reset_at=outcome.reset_at,
            )

            report = {"records": ended, "appended": lease is None}
            if lease is None:
                # the records first, whoever settles: the true outcome is on disk before
                # anything else (on a shared store they go in with the state, atomically)
                def append() -> None:
                    self.store.append_records(ended, parse(ended[0]["finished_at"]))

                _until_written(append, channel.stalled, self.say)
            if channel.settled_by_tick(report):
                return _as_recorded(item, ended[0])

            def settle() -> AttemptResult:
                return self._settle_claimed(claim, report)[0]

            if lease is None:
                return _until_written(settle, channel.stalled, self.say)
            # Across hosts the database may be briefly away (a restart, a failover): the
            # transaction is retried for a lease (at least 10 s). Should another host have
            # recorded the attempt `lost` meanwhile, `settle` sees that and records nothing.
            return _retry_while_leased(settle, max(lease.duration, 10.0), self.say)
        finally:
            if lease is not None:
                lease.release()

    def _decide(
        self,
        item: QueueItem,
        applied: AppliedJob | None,
        now: datetime,
        *,
        outcome: str,
        exit_code: int | None,
        signal: str | None,
        error: str | None,
        output: str,
        started_at: str,
        duration_s: float | None,
        log_path: str,
        output_for_match: str | None = None,
        agent: dict[str, Any] | None = None,
        permanent: bool = False,
        reset_at: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The records that end an attempt: its `attempt_finished` with the retry policy's
        decision (next, when, why, a usage-limit hold) and, when it ends in the dead-letter
        queue, `dead_lettered`. Reads no state: a supervisor appends these before anything
        else, so the attempt's true outcome is on disk whoever settles it (`_settle`)."""
        from agentjobs.retry import Next, Outcome, decide
        from agentjobs.spec import RetryPolicy, job_from_dict

        stamp = iso(now) or ""
        policy = job_from_dict(dict(applied.spec)).retry if applied else RetryPolicy()
        decision = decide(
            policy,
            Outcome(outcome),
            exit_code=exit_code,
            output=output_for_match if output_for_match is not None else output,
            attempts_used=_failures(item, outcome),
            now=now,
        )
        if permanent and decision.next == Next.RETRY:
            decision = dataclasses.replace(
                decision,
                next=Next.DEAD_LETTER,
                at=None,
                reason=f"a retry cannot fix this: {error}",
            )
        hold = None
        if Outcome(outcome) == Outcome.RATE_LIMITED and decision.next == Next.RETRY:
            until = _usage_limit_lifts(policy, item, reset_at, now)
            decision = dataclasses.replace(
                decision, at=until, reason=f"usage limit: retry at {iso(until)}"
            )
            hold = self._limit_key(applied)  # other jobs sharing the limit wait as long
        if applied is None and decision.next == Next.RETRY:
            decision = dataclasses.replace(
                decision, next=Next.DEAD_LETTER, reason="the job was deleted"
            )
        if duration_s is None:
            duration_s = max(0.0, (now - parse(started_at)).total_seconds())
        finished = self._record(
            "attempt_finished",
            item,
            applied,
            started_at=started_at,
            finished_at=stamp,
            duration_s=round(duration_s, 3),
            outcome=outcome,
            exit_code=exit_code,
            signal=signal,
            error=error,
            output_tail=output,
            log_path=log_path,
            next=decision.next.value,
            next_attempt_at=iso(decision.at) if decision.at else None,
            reason=decision.reason,
            **({"agent": agent} if agent else {}),
            **({"hold": hold} if hold else {}),
        )
        if decision.next != Next.DEAD_LETTER:
            return [finished]
        dead = self._record(
            "dead_lettered",
            item,
            applied,
            dlq_id=item.run_id,
            reason=decision.reason,
            outcome=outcome,
        )
        return [finished, dead]

    def _settle(
        self,
        runtime: Runtime,
        item: QueueItem,
        applied: AppliedJob | None,
        finished: Mapping[str, Any],
    ) -> AttemptResult:
        """Apply an attempt's `attempt_finished` record (`_decide`, already appended) to the
        state, inside a transaction: the retry (the item queued again), or the end of the run
        (a dead letter for the DLQ), a usage-limit hold, the job's summary, its notifications.
        Whoever settles an attempt - its tick, its supervisor, recovery - does it this way."""
        stamp = finished["finished_at"]
        outcome = finished["outcome"]
        error = finished.get("error")
        next_step = finished.get("next", "done")
        next_at = finished.get("next_attempt_at")
        reason = finished.get("reason")
        if finished.get("hold") and next_at:
            runtime.holds[finished["hold"]] = next_at
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
        dlq_id = None
        if next_step == "retry":
            corrective = bool(applied and applied.spec.get("retry", {}).get("corrective"))
            runtime.queue[item.id] = dataclasses.replace(
                item,
                state="queued",
                attempt=item.attempt + 1,
                failures=_failures(item, outcome),
                not_before=next_at or stamp,
                trigger="retry",
                corrective=corrective,
                history=(*item.history, summary),
                started_at=None,
                pid=None,
                host=None,
            )
            self._tell(
                f"{item.job}: run {item.run_id} attempt {item.attempt} {outcome}"
                f"{f' ({error})' if error else ''}; next attempt at {next_at} ({reason})"
            )
        else:
            runtime.queue.pop(item.id, None)
            if next_step == "dead_letter":
                dlq_id = item.run_id
                self.store.put_dead_letter(_dead_letter(item, applied, summary, reason))
                self._tell(
                    f"{item.job}: run {item.run_id} dead-lettered after attempt "
                    f"{item.attempt} ({reason}); see `agentjobs dlq show {dlq_id}`"
                )
        state = runtime.jobs.get(item.job)
        if applied is not None and applied.spec.get("notify"):
            self._notify_finish(
                item,
                applied,
                outcome,
                error,
                next_step,
                next_at,
                dlq_id,
                state.last_outcome if state else None,
            )
        if state is not None:
            state = dataclasses.replace(
                state, last_outcome=outcome, last_finished=stamp, last_run_id=item.run_id
            )
            if outcome == "succeeded":
                state = dataclasses.replace(state, last_success=stamp)
            if next_step != "retry" and applied is not None:
                state = self._after_run(state, applied, parse(stamp))
            runtime.jobs[item.job] = state
        return AttemptResult(
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
        )

    def _notify_finish(
        self,
        item: QueueItem,
        applied: AppliedJob,
        outcome: str,
        error: str | None,
        next_step: str,
        next_at: str | None,
        dlq_id: str | None,
        previous: str | None,
    ) -> None:
        """The events a finished attempt sends (delivered in the background)."""
        notify = applied.spec.get("notify")
        fields = {"outcome": outcome, "error": error, "next": next_step, "next_attempt_at": next_at}
        if outcome == "succeeded":
            self._notify("succeeded", item, applied, **fields)
            if previous not in (None, "succeeded"):
                self._notify("recovered", item, applied, **fields)
            self._notifier().ping(notify, "success", item.run_id)
            return
        specific = {"timeout": "timeout", "silence": "silence", "rate_limited": "rate_limited"}
        if outcome != "interrupted":
            self._notify(specific.get(outcome, "failed"), item, applied, **fields)
        if outcome not in ("interrupted", "rate_limited"):
            self._notifier().ping(notify, "fail", item.run_id)
        if dlq_id:
            self._notify("dead_lettered", item, applied, dlq_id=dlq_id, **fields)

    @staticmethod
    def _after_run(state: JobState, applied: AppliedJob, now: datetime) -> JobState:
        """`every` counts from the end of the run (systemd OnUnitInactiveSec)."""
        from agentjobs.schedule import fire_time
        from agentjobs.spec import Schedule

        raw = applied.spec.get("schedule")
        if not raw or raw.get("every") is None or not applied.spec.get("enabled", True):
            return state
        schedule = Schedule(**raw)
        due = fire_time(applied.name, schedule, now + timedelta(seconds=schedule.every or 0))
        return dataclasses.replace(state, next_due=iso(due))

    def _worker(
        self, results: list[AttemptResult], ended: Callable[[], None] = lambda: None
    ) -> None:
        try:
            if self.stop.is_set():
                return
            claim = self._claim()
            lane = None
            if isinstance(claim, _Claim):
                from agentjobs.supervisor import Lane

                lane = Lane(self._fork_server())
            try:
                while isinstance(claim, _Claim):
                    result, claim = self._execute(claim, claim_next=True, lane=lane)
                    with self._guard:
                        results.append(result)
                    ended()
            finally:
                if lane is not None:
                    lane.close()  # its idle supervisor ends
        except UserError as exc:  # the state became unreachable (a database restart...)
            with self._guard:
                self._failures.append(exc)  # raised by _run_queue once every worker is done
        finally:
            shared = self._shared()
            if shared is not None:
                shared.close_thread()  # this thread's connection: a daemon makes many threads

    def _run_queue(self) -> list[AttemptResult]:
        results: list[AttemptResult] = []
        workers = [
            threading.Thread(target=self._worker, args=(results,), daemon=True)
            for _ in range(self._workers())
        ]
        for worker in workers:
            worker.start()
            time.sleep(0.005)  # let the first worker claim before the next one looks
        for worker in workers:
            while worker.is_alive():
                worker.join(0.1)  # short joins keep the main thread free for signals
        if self._failures:
            raise self._failures[0]
        return results

    # -- agentjobs run JOB ---------------------------------------------------------------------

    def enqueue_manual(
        self, job: str, trigger: str = "manual", replay_of: str | None = None
    ) -> QueueItem:
        with self.store.transaction(self.lock_timeout) as runtime:
            applied = self.store.applied()
            if job not in applied:
                known = ", ".join(sorted(applied)) or "none applied"
                raise UserError(
                    f"no applied job named {job!r} (jobs: {known}); run `agentjobs apply` first"
                )
            spec = applied[job].spec
            run_id = new_ulid()
            stamp = self._now()
            item = QueueItem(
                id=f"{job}@{trigger}-{run_id}",
                run_id=run_id,
                job=job,
                trigger=trigger,
                priority=spec.get("priority", "normal"),
                lock_key=_lock_key(spec, run_id),
                queued_at=stamp,
                not_before=stamp,
                replay_of=replay_of,
            )
            runtime.queue[item.id] = item
        return item

    def run_now(
        self, job: str, wait: bool = False, poll: float = 0.25
    ) -> tuple[QueueItem, AttemptResult | str]:
        """Enqueue a manual run and run it in the foreground; or say what holds it back."""
        item = self.enqueue_manual(job)
        while True:
            claim = self._claim(only=item.id)
            if isinstance(claim, _Claim):
                try:
                    result = self._execute(claim)[0]
                finally:
                    self._close_fork_server()
                self._deliver()  # the attempt's events, written to the outbox by its supervisor
                return item, result
            if claim is None:
                return item, "the run was taken by another tick"
            if not wait or self.stop.is_set():
                return item, claim
            time.sleep(poll)

    # -- pause / resume, dead letters ----------------------------------------------------------

    def set_paused(self, job: str, paused: bool) -> None:
        from agentjobs.reconcile import fresh_state
        from agentjobs.spec import job_from_dict

        with self.store.transaction(self.lock_timeout) as runtime:
            applied = self.store.applied()
            if job not in applied or job not in runtime.jobs:
                raise UserError(f"no applied job named {job!r}")
            state = runtime.jobs[job]
            if paused:
                runtime.jobs[job] = dataclasses.replace(state, paused=True)
            elif state.paused:
                # Resume from now: the paused period is not "missed".
                fresh = fresh_state(job_from_dict(dict(applied[job].spec)), self.clock.now(), state)
                runtime.jobs[job] = dataclasses.replace(fresh, paused=False)

    def replay(self, entry_id: str) -> QueueItem:
        entry = self._dead_letter(entry_id)
        if entry["status"] == "resolved":
            raise UserError(f"dead letter {entry_id} is resolved; nothing to replay")
        item = self.enqueue_manual(entry["job"], trigger="replay", replay_of=entry_id)
        entry["replays"] = [*entry.get("replays", []), {"run_id": item.run_id, "at": self._now()}]
        entry["status"] = "replayed"
        self.store.put_dead_letter(entry)
        self.store.append_records(
            [self._record("replayed", item, self.store.applied().get(item.job), dlq_id=entry_id)],
            self.clock.now(),
        )
        return item

    def resolve(self, entry_id: str, note: str) -> dict[str, Any]:
        entry = self._dead_letter(entry_id)
        entry["status"] = "resolved"
        entry["note"] = note
        entry["resolved_at"] = self._now()
        self.store.put_dead_letter(entry)
        stub = QueueItem(
            id=entry_id,
            run_id=entry["run_id"],
            job=entry["job"],
            trigger=entry.get("trigger", "schedule"),
            priority="normal",
            lock_key="",
            queued_at="",
            not_before="",
            slot=entry.get("slot"),
            attempt=len(entry.get("attempts", [])),
        )
        self.store.append_records(
            [self._record("resolved", stub, None, dlq_id=entry_id, note=note)], self.clock.now()
        )
        return entry

    def _dead_letter(self, entry_id: str) -> dict[str, Any]:
        entry = self.store.dead_letter(entry_id)
        if entry is None:
            raise UserError(f"no dead letter {entry_id!r}; see `agentjobs dlq list`")
        return entry


class Workers:
    """A daemon's worker threads, kept across its passes (each pass has its own engine): how
    many run, a count of attempt ends (each may free a slot or queue a retry: the daemon's
    loop passes again), and the first failure a worker hit (raised by the next pass, as a tick
    raises its workers' failure)."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._failures: list[UserError] = []
        self._guard = threading.Lock()
        self._running = 0
        self._ended = 0

    def start(self, target: Callable[[Workers], None]) -> None:
        self._threads = [w for w in self._threads if w.is_alive()]
        with self._guard:
            self._running += 1
        worker = threading.Thread(target=target, args=(self,), daemon=True)
        worker.start()
        self._threads.append(worker)
        time.sleep(0.005)  # let this worker claim before the next one looks

    def running(self) -> int:
        with self._guard:
            return self._running

    def ended(self) -> int:
        with self._guard:
            return self._ended

    def attempt_ended(self) -> None:
        with self._guard:
            self._ended += 1

    def done(self, failures: list[UserError], worked: bool) -> None:
        """A worker is done (nothing more to claim); one that ran attempts freed its slot."""
        with self._guard:
            self._failures.extend(failures)
            self._running -= 1
            self._ended += 1 if worked else 0

    def raise_failure(self) -> None:
        with self._guard:
            if self._failures:
                raise self._failures.pop(0)

    def join(self) -> None:
        """Wait for every worker (after a stop: their attempts are being interrupted)."""
        for worker in self._threads:
            while worker.is_alive():
                worker.join(0.1)  # short joins keep the main thread free for signals
        self._threads = []


def _retry_while_leased(step: Callable[[], _T], window: float, say: Callable[[str], None]) -> _T:
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


def _usage_limit_lifts(
    policy: RetryPolicy, item: QueueItem, reset_at: datetime | None, now: datetime
) -> datetime:
    """When a rate-limited attempt is tried again: at the reset the agent named (plus up to a
    minute, so the jobs held with it do not all start at once), else after the backoff."""
    import random

    if reset_at is not None and reset_at > now:
        return reset_at + timedelta(seconds=random.uniform(0, 60))
    from agentjobs.retry import delay

    return now + timedelta(seconds=delay(policy, max(1, item.attempt)))


def _dead_letter(
    item: QueueItem, applied: AppliedJob | None, last: AttemptSummary, reason: str | None
) -> dict[str, Any]:
    """The dead-letter entry of a run that ended with `last`: the spec as it was, every
    attempt."""
    return {
        "id": item.run_id,
        "job": item.job,
        "run_id": item.run_id,
        "slot": item.slot,
        "trigger": item.trigger,
        "created_at": last.finished_at,
        "reason": reason,
        "status": "open",
        "spec": dict(applied.spec) if applied else None,
        "spec_hash": applied.spec_hash if applied else None,
        "attempts": [h.to_dict() for h in (*item.history, last)],
        "replays": [],
        "note": None,
        "replay_of": item.replay_of,
    }


def _failures(item: QueueItem, outcome: str) -> int:
    """The failed attempts of the run once this one is counted: an interrupted, rate-limited
    or successful attempt uses up none of the policy's attempts."""
    return item.failures + (0 if outcome in ("interrupted", "rate_limited", "succeeded") else 1)


def _until_written(
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


def _abandoned(item: QueueItem, finished: Mapping[str, Any]) -> AttemptResult:
    """An attempt whose lease was lost and which another host recorded: this host reports it
    as interrupted and records nothing."""
    return dataclasses.replace(
        _as_recorded(item, finished),
        outcome="interrupted",
        error="the lease was lost; another host recorded this attempt",
        next="done",
        next_at=None,
        dlq_id=None,
    )


def _as_recorded(item: QueueItem, finished: Mapping[str, Any]) -> AttemptResult:
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


_REOPENED: dict[tuple[int, int], Store] = {}


def _reopened(store: Store) -> Store:
    """`store` reopened once per supervisor process (a supervisor runs attempt after attempt):
    the copy a fork inherited may hold a lock or a connection of the tick's other threads."""
    mine = (os.getpid(), id(store))
    if mine not in _REOPENED:
        _REOPENED.clear()  # what an ancestor process reopened is not ours
        _REOPENED[mine] = store.reopened()
    return _REOPENED[mine]


_IDENTITY: dict[int, dict[str, Any]] = {}


def _identity() -> dict[str, Any]:
    """This process as (pid, start time in clock ticks since boot, boot id): unlike a pid alone,
    never the same for two processes, even after a pid is reused or the machine restarts. (Read
    once per process: a supervisor runs attempt after attempt.)"""
    from agentjobs.runner import process_identity

    pid = os.getpid()
    if pid not in _IDENTITY:
        _IDENTITY.clear()
        _IDENTITY[pid] = process_identity(pid)
    return dict(_IDENTITY[pid])


def _result_dict(result: AttemptResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}


def _still_ours(current: QueueItem, item: QueueItem) -> bool:
    return (
        current.state == "running"
        and current.attempt == item.attempt
        and current.run_id == item.run_id
        and current.host == item.host
        and current.pid == item.pid
    )


def _any_due(runtime: Runtime, now: str, check_clock: bool = True) -> bool:
    """Whether a job not paused is due: its slot has come, or its `needs` are met anew; or
    (`check_clock`) a stored time is further ahead than its schedule allows (the clock went
    back: `Engine._check_clock`)."""
    horizons: dict[float, str] = {}
    for name, state in runtime.jobs.items():
        due = state.next_due
        if due is not None:
            if due <= now:
                if not state.paused:
                    return True
            elif check_clock and state.next_due_max_gap is not None:  # inlined: a hot loop
                gap = state.next_due_max_gap
                if due > (horizons.get(gap) or _horizon(now, gap, horizons)):
                    return True
        if state.needs and not state.paused and _needs_met(runtime, name, state):
            return True
    if not check_clock:
        return False
    if runtime.holds:
        horizon = _horizon(now, MAX_HOLD_S, horizons)
        if any(until > horizon for until in runtime.holds.values()):
            return True
    for item in runtime.queue.values():
        if item.state == "queued" and item.not_before > now:
            origin = item.history[-1].finished_at if item.history else item.queued_at
            if origin > now or item.not_before > _horizon(now, MAX_HOLD_S, horizons):
                return True
    return False


def _horizon(now: str, seconds: float, cache: dict[float, str]) -> str:
    """`now` plus `seconds`, as a stored time string (one parse per distinct interval)."""
    found = cache.get(seconds)
    if found is None:
        found = cache[seconds] = iso(parse(now) + timedelta(seconds=seconds)) or ""
    return found


def _implausible_due(state: JobState, now: str, horizons: dict[float, str]) -> bool:
    """A next-due time further ahead than the schedule allows from now: some slot between now
    and it would be silenced. (A slot marker ahead of now alone silences nothing: the slots up
    to it ran, in what was then the present.)"""
    assert state.next_due is not None
    gap = state.next_due_max_gap
    return (
        gap is not None and state.next_due > now and state.next_due > _horizon(now, gap, horizons)
    )


def _recompute_due(name: str, state: JobState, job: AppliedJob, now: datetime) -> JobState:
    """The job's next-due time from `now`: the next cron slot after the marker (brought back to
    now), or at most one `every` interval away."""
    from agentjobs.schedule import fire_time, next_fire
    from agentjobs.spec import Schedule

    schedule = Schedule(**job.spec["schedule"])
    stamp = iso(now) or ""
    marker = state.last_slot if state.last_slot is None or state.last_slot <= stamp else stamp
    due = parse(state.next_due) if state.next_due else now
    if schedule.cron is not None:
        slot = next_fire(schedule.cron, schedule.timezone, parse(marker) if marker else now)
        due = fire_time(name, schedule, slot)
    elif schedule.every is not None:
        due = min(due, now + timedelta(seconds=state.next_due_max_gap or schedule.every))
    return dataclasses.replace(state, last_slot=marker, next_due=iso(due))


def _longest_wait(item: QueueItem, job: AppliedJob | None) -> float:
    """The longest a retry of `item` can be meant to wait: its policy's max backoff, or for a
    usage limit (the reset time an agent reported) MAX_HOLD_S."""
    if item.history and item.history[-1].outcome == "rate_limited":
        return MAX_HOLD_S
    backoff = dict((job.spec.get("retry") or {}).get("backoff") or {}) if job else {}
    return float(backoff.get("max", 1800.0))


def _needs_met(runtime: Runtime, name: str, state: JobState) -> bool:
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


_ORDER = operator.attrgetter("order")


def _in_order(items: list[QueueItem]) -> Iterator[QueueItem]:
    """Items by priority then age. Usually the first one can run, so it is found with `min`
    and the rest are sorted only when it cannot."""
    if not items:
        return
    first = min(items, key=_ORDER)
    yield first
    yield from sorted((i for i in items if i is not first), key=_ORDER)


def _lock_key(spec: Mapping[str, Any], run_id: str) -> str:
    """The job's lock key; with `isolation: worktree` each run works in its own worktree, so the
    key is the run's (runs of jobs on one repository may overlap)."""
    if spec.get("isolation") == "worktree":
        return f"{spec['lock']}#worktree-{run_id}"
    return str(spec["lock"])
