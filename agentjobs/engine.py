"""One tick: recover orphans, enqueue due slots, claim by priority under locks, run, record.

State changes happen in short store transactions (the state lock is never held while a job runs);
lock keys and concurrency slots are `flock`s held for the length of an attempt and inherited by
its processes (locks.py). The order inside each transaction is: append the run records, then let
the transaction write the runtime, so a crash can duplicate a record but never lose one, and a
slot's enqueue and its job's marker advance are one atomic write (exactly-once firing).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from agentjobs import limits, planning
from agentjobs.clock import Clock, iso
from agentjobs.errors import UserError
from agentjobs.limits import Limits
from agentjobs.store import (
    AppliedJob,
    Claim,
    ClaimRequest,
    Hold,
    QueueItem,
    Refusal,
    Runtime,
    Store,
)

if TYPE_CHECKING:
    from agentjobs.cancel import Cancellation, CancelSwitch
    from agentjobs.daemon import Workers
    from agentjobs.notify import Notifier
    from agentjobs.settle import AttemptResult, Recorder, Settlement
    from agentjobs.supervisor import ForkServer, Lane

_T = TypeVar("_T")
DEFAULT_LOCK_TIMEOUT = 30.0
# The longest a usage-limit hold (and its retry) may lie ahead: agents' weekly limits reset within
# a week; the hold adds up to a minute (engine._finish). Further ahead, the clock went back.


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
    # armed (`agentjobs run`'s Ctrl-C): what runs in the foreground is cancelled, not stopped
    cancel: CancelSwitch | None = None
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
        notify = applied.spec.get("notify") if applied and applied.parsed.notify else None
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

    def _recorder(self) -> Recorder:
        from agentjobs.settle import Recorder

        return Recorder(self.host, os.getpid())

    def _record(
        self, event: str, item: QueueItem, applied: AppliedJob | None, **fields: Any
    ) -> dict[str, Any]:
        return self._recorder().record(event, item, applied, self._now(), **fields)

    # -- the hot path --------------------------------------------------------------------------

    def _has_work(self, runtime: Runtime, now: str) -> bool:
        """Whether a tick must do anything at all: compares stored strings only."""
        if runtime.applied_version != self.store.applied_version():
            return True
        return bool(runtime.queue) or planning.any_due(
            runtime, now, check_clock=self.store.one_clock
        )

    def _must_prepare(self, runtime: Runtime) -> bool:
        """Whether this pass needs the exclusive whole-state transaction (due slots, needs, an
        apply, a lifted hold, an orphan) or only claims what is queued: hosts sharing a store
        that only claim do not queue behind each other."""
        now = self._now()
        if runtime.applied_version != self.store.applied_version():
            return True
        held = any(until <= now for until in runtime.holds.values())
        if held or planning.any_due(runtime, now, check_clock=False):
            return True
        return self.store.orphans_possible(runtime)

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
        self.store.see_host(self.host, self.labels)
        if self._must_prepare(runtime):
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
        from agentjobs import recovery

        orphans = recovery.orphans(self)
        with self.store.transaction(self.lock_timeout) as runtime:
            applied = self.store.applied()
            now = self.clock.now()
            records: list[dict[str, Any]] = []
            pass_ = self._pass()
            if runtime.applied_version != pass_.applied_version:
                planning.reconcile_states(pass_, runtime, applied, now)
            stamp = iso(now) or ""
            planning.check_clock(pass_, runtime, applied, now)
            for key in [k for k, until in runtime.holds.items() if until <= stamp]:
                del runtime.holds[key]  # the usage limit has lifted
            recovered = recovery.recover(self, runtime, applied, now, records, orphans)
            planning.drop_deleted(pass_, runtime, applied, records)
            enqueued, skipped = planning.enqueue_due(pass_, runtime, applied, now, records)
            enqueued += planning.enqueue_needs(pass_, runtime, applied, now)
            for target, payload in pass_.events:
                self._notifier().event(target, payload)
            self.store.append_records(records, now)
        return recovered, enqueued, skipped

    def _pass(self) -> planning.Pass:
        return planning.Pass(
            record=self._record,
            tell=self._tell,
            host=self.host,
            applied_version=self.store.applied_version(),
            one_clock=self.store.one_clock,
        )

    # -- claiming and running ------------------------------------------------------------------

    def _claim(
        self,
        only: str | None = None,
        keep: Hold | None = None,
        first: Callable[[Runtime], bool] | None = None,
    ) -> Claim | Refusal | None:
        """Take the best runnable item (`Store.claim`): its lock key and a concurrency slot,
        marked running. None when nothing can run now; with `only`, a `Refusal` saying what
        holds that item back. `keep` and `first`: see `ClaimRequest`."""
        config = self.store.config()
        per_host = config.get("max_concurrent_per_host")
        request = ClaimRequest(
            host=self.host,
            labels=frozenset(self.labels),
            now=self._now(),
            slots=self._slots(),
            host_slots=int(per_host) if per_host else None,
            timeout=self.lock_timeout,
            pid=os.getpid(),
            only=only,
            keep=keep,
            first=first,
            limits=Limits.from_config(config),
        )
        claimed = self.store.claim(request)
        for job, reason in request.notices:  # each budget hold's first refusal of the day
            self._budget_exceeded(job, reason)
        return claimed

    def _budget_exceeded(self, job: str, reason: str) -> None:
        """One `budget_exceeded` event for a job whose items wait on a budget today."""
        self._tell(f"{job}: {reason}")
        applied = self.store.applied().get(job)
        notify = applied.spec.get("notify") if applied and applied.parsed.notify else None
        if notify:
            event = {"event": "budget_exceeded", "job": job, "time": self._now()}
            self._notifier().event(notify, {**event, "host": self.host, "error": reason})

    def _execute(
        self, claim: Claim, claim_next: bool = False, lane: Lane | None = None
    ) -> tuple[AttemptResult, Claim | None]:
        """Run a claimed attempt under a supervisor process of `lane` (supervisor.py; a lane of
        its own when none is given) and settle it from what the supervisor reports; with
        `claim_next`, claim the next runnable item (in the same transaction when its key is
        free).

        The supervisor outlives this tick: should the tick die or freeze before it settles,
        the supervisor settles the attempt itself."""
        from agentjobs import supervisor
        from agentjobs.settle import AttemptResult

        if lane is None:
            own = supervisor.Lane(self._fork_server())
            try:
                return self._execute(claim, claim_next, own)
            finally:
                own.close()
        item = claim.item
        settled: list[tuple[AttemptResult, Claim | None]] = []

        def by_tick(finished: dict[str, Any]) -> bool:
            try:
                settled.append(self._settle_claimed(claim, finished, claim_next))
            except UserError as exc:
                self._tell(
                    f"{item.job}: run {item.run_id} attempt {item.attempt}: cannot record it "
                    f"yet ({exc}); its supervisor keeps trying"
                )
                return False
            return True

        raw = self._supervise(lane, claim, by_tick)
        result, following = settled[0] if settled else (AttemptResult(**raw), None)
        if following is None:
            claim.hold.done()
            if claim_next and not self.stop.is_set():
                candidate = self._claim()  # the key just freed, or one that was busy
                following = candidate if isinstance(candidate, Claim) else None
        return result, following

    def _supervise(
        self, lane: Lane, claim: Claim, by_tick: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """The attempt's result as its supervisor reports it (`supervisor.supervise`); a lost
        supervisor is reported `lost` for the next tick to recover."""
        from agentjobs import supervisor
        from agentjobs.settle import AttemptResult

        item = claim.item
        request = {
            "item": item.to_dict(),
            "job": claim.job.name,
            "applied": claim.job.to_dict(),
            "hold": claim.hold.handoff(),
        }
        try:
            return supervisor.supervise(
                lane,
                request,
                keep_fds=claim.hold.fds,
                # The supervisor holds the attempt's key now: this process drops its copy at
                # once, so a tick that is stopped (SIGSTOP) never keeps a key held once its
                # attempt is settled. The slot stays this worker's (its next claim's).
                after_fork=claim.hold.let_go,
                settle=by_tick,
                stop=self.stop,
                cancel=self.cancel.event if self.cancel is not None else None,
                on_cancel=lambda: self._cancel_claimed(claim),
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
            return AttemptResult(
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
            ).to_dict()

    def _cancel_claimed(self, claim: Claim) -> None:
        """The foreground attempt's cancel (`self.cancel` armed): recorded in the state, where
        its supervisor sees it (cancel.py). Should the state refuse the write, the attempt is
        stopped as by a shutdown instead (and retried), and the person is told."""
        from agentjobs import cancel

        assert self.cancel is not None
        item = claim.item
        try:
            cancel.cancel_run(self, item.run_id, self.cancel.by, self.cancel.reason)
        except UserError as exc:
            self._tell(
                f"{item.job}: run {item.run_id}: cannot record the cancel ({exc}); stopping the "
                "attempt instead: it is retried"
            )
            self.stop.set()

    def _settle_claimed(
        self, claim: Claim, finished: Mapping[str, Any], claim_next: bool = False
    ) -> tuple[AttemptResult, Claim | None]:
        """Settle an attempt from what its supervisor reports (`records`, its `_decide`, and
        whether they are `appended` yet), unless somebody already did: its supervisor, when
        the tick was frozen; another host, when the lease was lost. Records not yet appended
        (`Store.records_with_state`) go in with the state. The tick and the supervisor both
        settle this way; with `claim_next` the tick also claims the worker's next item with
        its slot (files: in the same write)."""
        from agentjobs import settle

        item = claim.item
        ended: list[dict[str, Any]] = list(finished["records"])
        outcome: list[AttemptResult] = []

        def apply(runtime: Runtime) -> bool:
            found = runtime.queue.get(item.id)
            if found is None or not settle.still_ours(found, item):
                if finished["appended"]:
                    outcome.append(settle.as_recorded(item, ended[0]))  # settled by the other side
                else:
                    self._tell(
                        f"{item.job}: run {item.run_id} attempt {item.attempt} lost its lease; "
                        "another host recorded it, this host records nothing"
                    )
                    outcome.append(settle.abandoned(item, ended[0]))
                return False
            now = self.clock.now()
            if not finished["appended"]:
                self.store.append_records(ended, now)
            outcome.append(self._settle(runtime, found, claim.job, ended[0]))
            planning.enqueue_needs(self._pass(), runtime, self.store.applied(), now)
            return claim_next and not self.stop.is_set()

        if not claim_next:
            with self.store.transaction(self.lock_timeout) as runtime:
                apply(runtime)
            return outcome[0], None
        following = self._claim(keep=claim.hold, first=apply)
        return outcome[0], following if isinstance(following, Claim) else None

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
        """The supervisor's part, in its own process (supervised.py)."""
        from agentjobs import supervised

        return supervised.handle(self, request, fds, channel)

    def _decide(
        self, item: QueueItem, applied: AppliedJob | None, now: datetime, **ended: Any
    ) -> list[dict[str, Any]]:
        """The records that end an attempt (`settle.finish_records`; `ended`: `Ended`'s
        fields). Reads no state: a supervisor appends these before anything else, so the
        attempt's true outcome is on disk whoever settles it (`_settle`)."""
        from agentjobs import settle

        return settle.finish_records(item, applied, settle.Ended(**ended), now, self._recorder())

    def _settle(
        self,
        runtime: Runtime,
        item: QueueItem,
        applied: AppliedJob | None,
        finished: Mapping[str, Any],
    ) -> AttemptResult:
        """Apply an attempt's `attempt_finished` record (`_decide`, already appended) to the
        state, inside a transaction (`settle.settle` says what changes). Whoever settles an
        attempt - its tick, its supervisor, recovery - does it this way."""
        from agentjobs import settle

        done = settle.settle(item, applied, runtime.jobs.get(item.job), finished)
        if finished.get("cost_usd"):
            config = Limits.from_config(self.store.config())
            limits.spent(runtime.ledger, applied.parsed if applied else None, finished, config)
        if done.hold is not None:
            runtime.holds[done.hold[0]] = done.hold[1]
        if done.retry is not None:
            runtime.queue[item.id] = done.retry
        else:
            runtime.queue.pop(item.id, None)
        if done.dead_letter is not None:
            self.store.put_dead_letter(done.dead_letter.to_dict())
        if done.review is not None and self.store.review(done.review.id) is None:
            self.store.put_review(done.review.to_dict())  # once: recovery may settle again
        cancel = item.cancel
        if done.cancelled is not None and cancel is not None:  # the retry a cancel dropped
            record = self._record(
                "cancelled", done.cancelled, applied, by=cancel.by, reason=cancel.reason
            )
            self.store.append_records([record], self.clock.now())
        if done.message:
            self._tell(done.message)
        if applied is not None:
            self._send(item, applied, done)
        if done.state is not None:
            runtime.jobs[item.job] = done.state
        return done.result

    def _send(self, item: QueueItem, applied: AppliedJob, done: Settlement) -> None:
        """A settlement's notifications (to the outbox, delivered in the background)."""
        for event in done.events:
            extra = {"dlq_id": done.result.dlq_id} if event == "dead_lettered" else {}
            self._notify(event, item, applied, **extra, **done.fields)
        for ping in done.pings:
            self._notifier().ping(applied.spec.get("notify"), ping, item.run_id)

    def _worker(
        self, results: list[AttemptResult], ended: Callable[[], None] = lambda: None
    ) -> None:
        try:
            if self.stop.is_set():
                return
            claim = self._claim()
            lane = None
            if isinstance(claim, Claim):
                from agentjobs.supervisor import Lane

                lane = Lane(self._fork_server())
            try:
                while isinstance(claim, Claim):
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
            self.store.close_thread()  # this thread's connection: a daemon makes many threads

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

    def run_now(
        self, job: str, wait: bool = False, poll: float = 0.25
    ) -> tuple[QueueItem, AttemptResult | Cancellation | str]:
        """Enqueue a manual run and run it in the foreground; or say what holds it back. With
        `self.cancel` armed while it waits for its key (`wait`), the run is cancelled."""
        from agentjobs import operate

        item = operate.enqueue_manual(self, job)
        while True:
            if self.cancel is not None and self.cancel.event.is_set():
                from agentjobs import cancel

                switch = self.cancel
                return item, cancel.cancel_run(self, item.run_id, switch.by, switch.reason)
            claim = self._claim(only=item.id)
            if isinstance(claim, Claim):
                try:
                    result = self._execute(claim)[0]
                finally:
                    self._close_fork_server()
                self._deliver()  # the attempt's events, written to the outbox by its supervisor
                return item, result
            if claim is None:
                return item, "the run was taken by another tick"
            if not wait or self.stop.is_set():
                return item, claim.reason
            time.sleep(poll)
