"""The state backend protocol and the values that cross it.

Nothing outside `agentjobs/store/` reads or writes state files (DESIGN.md). Every backend keeps the
same contract, checked by one test suite run against each (tests/test_store_contract.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agentjobs.limits import Limits
    from agentjobs.spec import JobSpec
    from agentjobs.store.files import FileStore

STATE_FORMAT = 1
PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True, slots=True)
class AppliedJob:
    """A job spec as applied: the stored spec and where and when it came from."""

    name: str
    spec: Mapping[str, Any]  # JobSpec.to_dict(), as stored; `parsed` is the typed JobSpec
    spec_hash: str
    schedule_hash: str
    source: str
    applied_at: str
    git_commit: str | None = None
    _parsed: JobSpec | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def parsed(self) -> JobSpec:
        """The spec as a typed `JobSpec` (built once per object: stores keep their objects)."""
        if self._parsed is None:
            from agentjobs.spec import job_from_dict

            object.__setattr__(self, "_parsed", job_from_dict(dict(self.spec)))
        assert self._parsed is not None
        return self._parsed

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": dict(self.spec),
            "spec_hash": self.spec_hash,
            "schedule_hash": self.schedule_hash,
            "source": self.source,
            "applied_at": self.applied_at,
            "git_commit": self.git_commit,
        }

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> AppliedJob:
        return cls(
            name=name,
            spec=data["spec"],
            spec_hash=data["spec_hash"],
            schedule_hash=data["schedule_hash"],
            source=data["source"],
            applied_at=data["applied_at"],
            git_commit=data.get("git_commit"),
        )

    @property
    def limit_key(self) -> str | None:
        """The usage-limit key: jobs with the same key share an agent account's usage limit
        (`agent.limit_key`, default the agent's `kind`); None for a job without an agent."""
        agent = self.spec.get("agent")
        if not agent:
            return None
        return str(agent.get("limit_key") or agent.get("kind"))


@dataclass(frozen=True, slots=True)
class JobState:
    """Where a job stands between runs. Times are UTC ISO-8601 strings.

    `next_due` is precomputed (at apply and after each run) so a tick with nothing due compares
    timestamps and imports no schedule machinery (STYLE.md rule 14). `schedule_hash` says which
    schedule it was computed for; a mismatch means "recompute". `last_slot` is the catch-up
    marker: slots up to it have been enqueued or recorded as skipped, never again. The `last_*`
    fields are the summary `status` shows, so its cost does not grow with history.
    """

    schedule_hash: str
    next_due: str | None = None
    last_slot: str | None = None
    last_finished: str | None = None
    last_started: str | None = None
    last_run_id: str | None = None
    last_outcome: str | None = None
    last_success: str | None = None
    paused: bool = False
    needs: tuple[str, ...] = ()  # copied from the spec so a tick can check triggers cheaply
    # How far ahead of now `next_due` can be while the schedule holds (seconds; None: no
    # bound, an `at` job). Further ahead means the clock went back, or a tick ran while it was
    # ahead: the tick recomputes it (issue 10, item 5), noticed with string compares only.
    next_due_max_gap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            name: value for name in _JOB_STATE_FIELDS if (value := getattr(self, name)) is not None
        }
        data["needs"] = list(self.needs)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobState:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["needs"] = tuple(values.get("needs", ()))
        return cls(**values)


_JOB_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(JobState))


@dataclass(frozen=True, slots=True)
class AttemptSummary:
    """One finished attempt, as kept on a queued item and in a dead letter."""

    attempt: int
    outcome: str
    started_at: str
    finished_at: str
    exit_code: int | None = None
    signal: str | None = None
    error: str | None = None
    log_path: str | None = None
    output_tail: str = ""
    agent: dict[str, Any] | None = None  # the agent's facts (session id for --resume)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class QueueState(StrEnum):
    """Where a queued item is: waiting for its key and a slot, or claimed and running."""

    QUEUED = "queued"
    RUNNING = "running"


_QUEUE_STATES: dict[str, QueueState] = {state.value: state for state in QueueState}


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A person's cancel of a running attempt (`agentjobs cancel`, cancel.py): who, when (UTC),
    why. Kept on the running item, where the attempt's supervisor, on whichever host, looks."""

    by: str
    at: str
    reason: str


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A run waiting for, or holding, its lock key.

    `id` is deterministic for scheduled slots (`job@slot`), so racing ticks enqueue a slot at most
    once. `attempt` is the number the next (or running) attempt has; `failures` counts the failed
    attempts that used up one of the policy's `attempts`.
    """

    id: str
    run_id: str
    job: str
    trigger: str
    priority: str
    lock_key: str
    queued_at: str
    not_before: str
    slot: str | None = None
    attempt: int = 1
    failures: int = 0
    corrective: bool = False
    replay_of: str | None = None
    history: tuple[AttemptSummary, ...] = ()
    state: QueueState = QueueState.QUEUED
    started_at: str | None = None
    host: str | None = None
    pid: int | None = None  # the tick process that runs it
    child_pid: int | None = None
    # where the records ended when this attempt was claimed (`Store.records_mark`): recovery
    # looks for the attempt's end from there (None: an older state, or a shared store)
    records_at: str | None = None
    # set by the claim (`limits.py`): what the attempt may spend, and the fallback agent it
    # runs instead of the job's own (an index into agent.fallback) and why
    cap_usd: float | None = None
    fallback: int | None = None
    fallback_reason: str | None = None
    # a person cancelled this running attempt (`CancelRequest`, cancel.py): its supervisor
    # stops it and records it `cancelled`; a settle that would retry the run ends it instead
    cancel_by: str | None = None
    cancel_at: str | None = None
    cancel_reason: str | None = None
    # a run a reviewer asked for (`review retry`, review.py): of (the reviewed run), guidance,
    # note, by, diffstat (what the reviewed run changed); its prompt carries them
    review: dict[str, Any] | None = None

    # (priority rank, queued_at, id): the claim order, computed once (a claim finds the first
    # of a thousand queued items with `min` on it)
    order: tuple[int, str, str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # runs for every item of every runtime read: dict lookups, not Enum() calls
        state = _QUEUE_STATES.get(self.state)
        if state is None:
            raise ValueError(f"{self.state!r} is not a queue state")
        set_ = object.__setattr__
        set_(self, "state", state)
        set_(self, "order", (PRIORITY_RANK.get(self.priority, 1), self.queued_at, self.id))

    @property
    def cancel(self) -> CancelRequest | None:
        """The cancel a person requested for this running attempt, if any."""
        if self.cancel_by is None:
            return None
        return CancelRequest(self.cancel_by, self.cancel_at or "", self.cancel_reason or "")

    def to_dict(self) -> dict[str, Any]:
        # None fields are left out (from_dict restores them): a smaller runtime.json to fsync
        data = {
            name: value for name in _QUEUE_ITEM_FIELDS if (value := getattr(self, name)) is not None
        }
        data["history"] = [h.to_dict() for h in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueueItem:
        values = dict(data)
        values["history"] = tuple(AttemptSummary(**h) for h in values.get("history", ()))
        return cls(**values)


_QUEUE_ITEM_FIELDS = tuple(f.name for f in dataclasses.fields(QueueItem) if f.init)


def state_directory(store: Store) -> FileStore | None:
    """`store` when it is a state directory (what `repair` rebuilds), else None."""
    from agentjobs.store.files import FileStore

    return store if isinstance(store, FileStore) else None


def held_message(key: str, by: QueueItem | str, *, with_host: bool = False) -> str:
    """Why lock key `key` cannot be had: "lock key K is held by run R (job J, attempt N,
    started T)" for the running item `by` (with `with_host`, its host before the start), or
    "lock key K is held by <by>" for any other holder ("another process", a lease's owner)."""
    if isinstance(by, str):
        return f"lock key {key} is held by {by}"
    host = f", host {by.host}" if with_host else ""
    return (
        f"lock key {key} is held by run {by.run_id} (job {by.job}, attempt {by.attempt}{host}, "
        f"started {by.started_at})"
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A run that ended in the dead-letter queue: the spec as it was and every attempt. Kept
    until a person replays or resolves it (never deleted by agentjobs). `to_dict`/`from_dict` are
    its one codec (a file per entry, or a row)."""

    id: str
    job: str
    run_id: str
    slot: str | None
    trigger: str
    created_at: str
    reason: str | None
    spec: dict[str, Any] | None
    spec_hash: str | None
    attempts: tuple[dict[str, Any], ...]
    status: str = "open"  # open | replayed | resolved
    replays: tuple[dict[str, Any], ...] = ()
    note: str | None = None
    replay_of: str | None = None
    resolved_at: str | None = None  # written only once resolved

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["attempts"], data["replays"] = list(self.attempts), list(self.replays)
        if self.resolved_at is None:
            del data["resolved_at"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeadLetter:
        values = dict(data)
        values["attempts"] = tuple(values.get("attempts", ()))
        values["replays"] = tuple(values.get("replays", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Review:
    """A run in the review inbox (review.py): its branch and commit range, what landing it
    means (`into`, `strategy`), why it waits (`conflict`: a merge that did not go through) and,
    once a person decided, the decision. `to_dict`/`from_dict` are its one codec."""

    id: str  # the run id
    job: str
    run_id: str
    attempt: int
    created_at: str
    workdir: str
    branch: str
    base: str | None
    commit: str | None
    into: str
    strategy: str
    mode: str  # the job's land mode: review, or merge (that conflicted)
    diffstat: str | None = None
    conflict: str | None = None
    log_path: str | None = None
    cost_usd: float | None = None
    status: str = "pending"  # pending | approved | rejected | retried
    decision: dict[str, Any] | None = None  # action, by, at, note, guidance, landed, retry_run

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Review:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(slots=True)
class Runtime:
    """The mutable working copy of job states and the queue inside a transaction."""

    jobs: dict[str, JobState] = field(default_factory=dict)
    queue: dict[str, QueueItem] = field(default_factory=dict)
    # `Store.applied_version()` when these job states were last reconciled with the specs
    applied_version: str = ""
    # usage-limit holds: limit key (an agent kind or the job's limit_key) -> UTC time it lifts
    holds: dict[str, str] = field(default_factory=dict)
    # spend per day, attempt starts, recent costs (`limits.py` documents its form)
    ledger: dict[str, Any] = field(default_factory=dict)

    def items_of(self, job: str) -> list[QueueItem]:
        return [item for item in self.queue.values() if item.job == job]


class Hold(Protocol):
    """What a claim holds for its attempt until the attempt is settled: the lock key and a
    concurrency slot. On files, two flocked descriptors (inherited by the supervisor and the
    job: the key stays held while any process of the attempt lives); on PostgreSQL, lease rows
    renewed by the supervisor, with a fence that stops the attempt should renewals stop.

    - `fds`: the descriptors the supervisor and the job keep open (none for leases).
    - `handoff()`: what the supervisor needs to take the hold over (JSON); with `fds`,
      `Store.hold_from(handoff, fds)` rebuilds it in the supervisor's process.
    - `let_go()`: the claiming process drops its copy of the key once the supervisor holds it
      (the slot stays the worker's, for its next claim).
    - `done()`: the claiming process is done with the hold (the attempt is settled and no next
      claim took the slot over): it drops what it still has. Leases are the supervisor's.
    - `release()`: (in the supervisor) let go of everything, once the attempt is settled.
    - `started(pid)`: the attempt's process group exists (leases: renewals and the fence).
    - `lost`, `reason`: set when the hold was lost meanwhile (a lease another host took over).
    - `fenced_reason()`: why the fence stopped the attempt, or None.
    - `settle_window`: for how long settling may be retried while the state is away (None:
      for as long as it takes; a lease: until another host may take the attempt over).
    """

    @property
    def fds(self) -> tuple[int, ...]: ...

    @property
    def lost(self) -> Any: ...  # a threading.Event or None

    @property
    def reason(self) -> str: ...

    @property
    def settle_window(self) -> float | None: ...

    def handoff(self) -> dict[str, Any]: ...

    def let_go(self) -> None: ...

    def done(self) -> None: ...

    def release(self) -> None: ...

    def started(self, pid: int) -> None: ...

    def fenced_reason(self) -> str | None: ...


def _no_limits() -> Limits:
    from agentjobs.limits import Limits

    return Limits()


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a claim needs from the engine: who claims, when, and for what.

    `only`: the claim is for that item alone (`agentjobs run JOB`) and a `Refusal` says what
    holds it back. `keep`: a hold whose slot this worker already has (its next claim takes it
    over, or lets it go). `first(runtime)`: changes to apply before claiming (settling the
    worker's last attempt), in the same write where the backend can (files), just before it
    otherwise; returning False means "do not claim"."""

    host: str
    labels: frozenset[str]
    now: str
    slots: int  # max_concurrent (across the cluster on a shared store)
    host_slots: int | None  # max_concurrent_per_host
    timeout: float
    pid: int
    only: str | None = None
    keep: Hold | None = None
    first: Callable[[Runtime], bool] | None = None
    limits: Limits = field(default_factory=_no_limits)  # budgets and rates (`limits.py`)
    # (job, reason) of each budget hold first met today: one budget_exceeded event each
    notices: list[tuple[str, str]] = field(default_factory=list)

    @property
    def moment(self) -> datetime:
        from agentjobs.clock import parse

        return parse(self.now)

    def note(self, item: QueueItem) -> str:
        """Who holds a key: read by `agentjobs status` and the holder message."""
        return (
            f"run {item.run_id} (job {item.job}, attempt {item.attempt}, pid {self.pid}, "
            f"host {self.host})"
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed attempt: its item (now running), its job as applied, what it holds."""

    item: QueueItem
    job: AppliedJob
    hold: Hold


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the one item a claim asked for (`only`) cannot run now."""

    reason: str


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One notification waiting in the outbox (notify.py delivers it).

    `kind` is `webhook` (POST `payload` as JSON to `target`), `command` (run the argv `target`
    with `payload` on stdin) or `ping` (GET `target`). Events with the same `key` (a ping URL)
    are delivered one at a time in `id` order: a run's `/start` before its `/fail`. `tries` counts
    failed deliveries; `next_at` (UTC ISO) is when the next one is due; `error` is the last one's.
    """

    id: str  # a ULID: ids sort in the order the events were written
    kind: str
    target: str | list[str]
    payload: Mapping[str, Any]
    created_at: str
    next_at: str
    key: str | None = None
    tries: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutboxEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """What one `apply` writes: jobs to put and names to remove."""

    put: Mapping[str, AppliedJob]
    remove: tuple[str, ...] = ()
    config: Mapping[str, Any] | None = None  # GlobalConfig.to_dict(); None leaves it as it is


class Store(Protocol):
    """A state backend.

    - `exists()`: whether any state has been written (read-only commands treat "no" as empty).
    - `lock(timeout)`: the exclusive state lock; raises `StateUnavailableError` naming the
      holder when it cannot be had within `timeout` seconds; an outage (a database that is
      down, a broken connection) raises it too, from any method.
    - `applied()`, `config()`: the applied jobs by name; the applied global config
      (`GlobalConfig.to_dict()`, `{}` before any apply).
    - `applied_version()`: an opaque value that changes whenever the applied jobs change.
    - `runtime()`: a snapshot of job states and the queue (no lock; never torn).
    - `queue_item(id)`: one queued or running item as last written, or None (no lock; cheap
      enough for a supervisor to look for a cancel of its attempt every second).
    - `transaction(timeout)`: lock, read the runtime, yield it for changes, write it back
      atomically if it changed. Enqueueing a slot and advancing its job's marker in one
      transaction is what makes slots fire exactly once.
    - `write_applied(change)`: write an apply's change all-or-nothing; call it inside a
      `transaction` (whose job states are written when it ends). Should a crash fall between
      the two writes, the engine sees a spec whose `schedule_hash` differs from its job state
      and recomputes the state, as apply would have.
    - `append_records(records, moment)` / `records(since)`: the JSONL run records.
    - `records_mark(moment)`: an opaque, cheap mark of where the records end now (stored in a
      claimed item's `records_at`), or None. `finished_records(items, now)`: the
      `attempt_finished` records of these running items' attempts, by (run id, attempt), looked
      up in one pass from their marks (or the day before they started), without the state lock.
    - `put_dead_letter(entry)` / `dead_letters()` / `dead_letter(id)`: the dead-letter queue;
      entries are never deleted by agentjobs.
    - `log_path(run_id, attempt)`, `locks_dir`: where attempt logs and lock files live.
    - `count(name)` / `counters()`: monotonic counters (notification delivery failures...).
    - `prune_logs(older_than, keep)`, `archive_records(before_day)`: retention (retention.py
      decides what to keep); `read_json`/`write_json`: small side files (caches, markers).
    - `outbox_put(events)`: add notifications to the durable outbox (inside a `transaction`, in
      the same transaction as the records that caused them on PostgreSQL).
    - `outbox_pending(limit)`: up to `limit` events waiting for delivery, oldest first, due or
      not (the caller compares `next_at`, so events of one `key` keep their order).
    - `outbox_done(id)`: delivered, forget it. `outbox_retry(id, next_at, error)`: one more
      failed try, the next one due at `next_at`. `outbox_dead(id, error)`: one more failed try
      and no more: kept as undelivered (never deleted by agentjobs). All three do nothing when
      the event is gone (another process delivered it: delivery is at least once).
    - `outbox_undelivered(limit)`: the undelivered events, oldest first.
    - `outbox_counts()`: (pending, undelivered), cheap enough for every tick.
    - `describe()`: where the state lives, for messages.
    - `reopened()`: a new store object on the same state, sharing nothing with this one (no
      lock, descriptor or connection): what a forked attempt supervisor uses.
    - `claim(request)`: take the best runnable item (one eligibility rule, `eligibility.py`,
      for every backend) with a `Hold` on its key and a slot, mark it running; a `Claim`, None
      (nothing runnable, or no free slot) or, for `request.only`, a `Refusal`.
    - `hold_from(handoff, fds)`: a claim's hold, taken over in a supervisor's process.
    - `orphaned(item)`: whether a running item's attempt has nobody left to finish it.
    - `see_host(host, labels)`: this host is alive (shared stores list hosts); `close_thread()`:
      let go of this thread's connection, if any; `orphans_possible(runtime)`: whether a pass
      must look for orphans (files: always, it is cheap; a shared store asks the leases once).
    - `prepare_keys(keys)`: make claiming these lock keys cheap later (files: create their lock
      files at apply time, not under the state lock of a busy tick; leases: nothing).
    - `hosts()`: the hosts seen lately (shared stores; none on files); `host_notes()`: queued
      item id -> [(host, why that host left it alone)] (a missing workdir, runs_on labels).
    - `shared`: whether several hosts share this state (PostgreSQL: leases instead of flocks);
      `local_dir`: this host's own directory (attempt logs, worktrees, the daemon's lock).
    - `one_clock`: every writer of this state reads this host's clock (files); on a shared
      store another host's clock may run ahead, so the clock check (engine) is off.
    - `records_with_state`: records are written in the state's own transaction (PostgreSQL),
      not appended ahead of it (files: a supervisor appends its finish before settling).
    - `put_progress(run_id, attempt, data)`: a running attempt's progress (progress.py,
      `Progress.to_dict()`), in place of what its run had; written by the attempt's
      supervisor at most once a second, never inside a `transaction`; a failure raises as any
      write does and the caller skips it. `progress()`: run id -> the data last put, with
      its `attempt`. `clear_progress(run_id, attempt)`: that attempt's progress goes (it is
      settled); nothing when the run has none or a later attempt's.
    """

    locks_dir: Path
    shared: bool
    one_clock: bool
    records_with_state: bool

    @property
    def local_dir(self) -> Path: ...

    def exists(self) -> bool: ...

    def lock(self, timeout: float) -> AbstractContextManager[None]: ...

    def applied(self) -> dict[str, AppliedJob]: ...

    def config(self) -> dict[str, Any]: ...

    def applied_version(self) -> str: ...

    def runtime(self) -> Runtime: ...

    def queue_item(self, item_id: str) -> QueueItem | None: ...

    def transaction(self, timeout: float) -> AbstractContextManager[Runtime]: ...

    def write_applied(self, change: AppliedChange) -> None: ...

    def append_records(self, records: Iterable[Mapping[str, Any]], moment: datetime) -> None: ...

    def records(
        self, since: datetime | None = None, newest_first: bool = False
    ) -> Iterator[dict[str, Any]]: ...

    def records_mark(self, moment: datetime) -> str | None: ...

    def finished_records(
        self, items: Iterable[QueueItem], now: datetime
    ) -> dict[tuple[str, int], dict[str, Any]]: ...

    def put_dead_letter(self, entry: Mapping[str, Any]) -> None: ...

    def dead_letters(self) -> list[dict[str, Any]]: ...

    def dead_letter(self, entry_id: str) -> dict[str, Any] | None: ...

    def put_review(self, entry: Mapping[str, Any]) -> None: ...

    def hold_key(self, key: str, note: str, seconds: float) -> Callable[[], None] | None:
        """Hold lock key `key` outside any claim (a landing, review.py): no attempt with that
        key is claimed until the returned release is called (or, on a shared store, for at
        most `seconds`). None when the key is held now."""
        ...

    def reviews(self) -> list[dict[str, Any]]: ...

    def review(self, entry_id: str) -> dict[str, Any] | None: ...

    def log_path(self, run_id: str, attempt: int) -> Path: ...

    def count(self, name: str, by: int = 1) -> None: ...

    def prune_logs(self, older_than: float, keep: set[str]) -> int: ...

    def archive_records(self, before_day: str) -> int: ...

    def read_json(self, name: str) -> Any: ...

    def write_json(self, name: str, value: Any) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def outbox_put(self, events: Iterable[OutboxEvent]) -> None: ...

    def outbox_pending(self, limit: int) -> list[OutboxEvent]: ...

    def outbox_done(self, event_id: str) -> None: ...

    def outbox_retry(self, event_id: str, next_at: str, error: str) -> None: ...

    def outbox_dead(self, event_id: str, error: str) -> None: ...

    def outbox_undelivered(self, limit: int) -> list[OutboxEvent]: ...

    def outbox_counts(self) -> tuple[int, int]: ...

    def describe(self) -> str: ...

    def reopened(self) -> Store: ...

    def claim(self, request: ClaimRequest) -> Claim | Refusal | None: ...

    def hold_from(self, handoff: Mapping[str, Any], fds: Sequence[int]) -> Hold: ...

    def orphaned(self, item: QueueItem) -> bool: ...

    def see_host(self, host: str, labels: Iterable[str]) -> None: ...

    def prepare_keys(self, keys: Iterable[str]) -> None: ...

    def hosts(self) -> list[dict[str, Any]]: ...

    def host_notes(self) -> dict[str, list[tuple[str, str]]]: ...

    def orphans_possible(self, runtime: Runtime) -> bool: ...

    def close_thread(self) -> None: ...

    def put_progress(self, run_id: str, attempt: int, data: Mapping[str, Any]) -> None: ...

    def progress(self) -> dict[str, dict[str, Any]]: ...

    def clear_progress(self, run_id: str, attempt: int) -> None: ...


def is_database_url(location: str) -> bool:
    """Whether a `--state-dir` names a PostgreSQL database (`postgresql://` or `postgres://`,
    as libpq spells its URLs) rather than a directory."""
    return location.startswith(("postgresql://", "postgres://"))


def open_store(location: str) -> Store:
    """The backend for `--state-dir`: a `postgresql://` URL (shared by hosts) or a directory
    path (the file backend, which never imports psycopg)."""
    if is_database_url(location):
        from agentjobs.store.postgres import PostgresStore

        return PostgresStore(location)
    from agentjobs.store.files import FileStore

    return FileStore(Path(location))
