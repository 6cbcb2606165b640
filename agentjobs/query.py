"""The read side: every question the CLI (and the web dashboard) asks of a state, answered as
typed data. Verbs parse their options, call one of these and render; none reads state files or
records itself.

- `jobs(store, now)`: one `JobRow` per applied job (`status`).
- `waits(store, now)`: every queued or running item and why it waits (`Wait`), judged by the
  claim's own eligibility rule (`store/eligibility.py`), plus the reasons a claim does not
  see: the lock key held by a running run, the concurrency slots all taken, a retry's backoff.
- `holds(store, now)`: usage-limit holds in force, and budgets or rates holding items back.
- `ledger(store, now)`: spend today against each cap.
- `history(store, ...)`: finished attempts and skipped slots with filters (`RunRow`).
- `run(store, run_id)`: one run's attempts, its dead letter (`RunDetail`).
- `describe(store, job, now, ...)`: everything about one job (`JobDetail`).

Times in these values are UTC ISO strings, as stored; renderers localise them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agentjobs.clock import iso, parse
from agentjobs.errors import UserError
from agentjobs.progress import Progress
from agentjobs.store import AppliedJob, ClaimRequest, QueueItem, Review, Runtime, Store

# the kinds of reasons an item waits, for filters and colours
WAIT_KINDS = (
    "running",  # it is the running attempt
    "retry",  # a retry's backoff (or a usage-limit reset) is not over
    "scheduled",  # not before its time
    "key",  # its lock key is held by another run
    "slots",  # every concurrency slot is taken
    "usage",  # its account is held by a usage limit
    "budget",  # a budget cap
    "rate",  # a rate (pacing)
    "paused",
    "disabled",
    "host",  # no host can run it (labels, workdir)
    "gone",  # its job is no longer applied
    "ready",  # nothing holds it: the next tick runs it
)


@dataclass(frozen=True, slots=True)
class Wait:
    """A queued or running item and why it is not running (or that it is)."""

    item_id: str
    run_id: str
    job: str
    attempt: int
    trigger: str
    state: str  # queued | running
    queued_at: str
    not_before: str
    lock_key: str
    kind: str  # one of WAIT_KINDS
    reason: str
    started_at: str | None = None
    host: str | None = None
    progress: Progress | None = None  # a running attempt's live progress (progress.py)
    progress_text: str | None = None  # it in one line: "40% copying · turn 3 · quiet 12s"


@dataclass(frozen=True, slots=True)
class JobRow:
    """One applied job at a glance (`status`)."""

    job: str
    schedule: str
    enabled: bool
    paused: bool
    lock: str
    next: str | None  # the next fire time, or sooner a queued run's
    last: str | None  # when the last attempt started
    result: str | None  # the last real outcome (a hold does not hide it)
    running: tuple[Wait, ...] = ()
    queued: int = 0
    waiting: str | None = None  # the first queued item's reason
    held: str | None = None  # a usage limit, budget or rate holding its items
    dead_letters: int = 0  # open dead letters of the job
    reviews: int = 0  # its runs awaiting a decision in the review inbox
    needs: tuple[str, ...] = ()  # triggered when these succeed
    skipped_by: tuple[tuple[str, str], ...] = ()  # (host, reason) a shared store noted


@dataclass(frozen=True, slots=True)
class HoldRow:
    """What holds an account's or a job's items back: a usage limit, a budget, a rate."""

    kind: str  # usage | budget | rate
    key: str  # the limit key (account), or the budget's/rate's scope
    until: str
    reason: str
    jobs: tuple[str, ...] = ()  # the jobs with items it holds


@dataclass(frozen=True, slots=True)
class Ledger:
    """Spend today (the config's day) by scope, and the caps that apply."""

    day: str
    spend: Mapping[str, float]
    caps: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class RunRow:
    """One finished attempt or skipped slot (`history`)."""

    time: str
    job: str
    run_id: str
    attempt: int
    trigger: str
    outcome: str
    duration_s: float | None
    detail: str
    lock_key: str
    cost_usd: float | None = None
    cost_estimated: bool = False
    turns: int | None = None
    event: str = "attempt_finished"


@dataclass(frozen=True, slots=True)
class RunDetail:
    """One run: its records (oldest first), where it stands, its dead letter."""

    run_id: str
    job: str
    records: tuple[dict[str, Any], ...]
    wait: Wait | None = None  # queued or running now
    dead_letter: dict[str, Any] | None = None

    @property
    def cost_usd(self) -> float:
        return round(sum(float(r.get("cost_usd") or 0) for r in self.records), 6)


@dataclass(frozen=True, slots=True)
class JobDetail:
    """Everything `describe JOB` shows."""

    job: str
    spec: dict[str, Any]
    file: str | None
    drift: tuple[str, ...]  # how the file differs from what is applied (unapplied edits)
    row: JobRow
    fire_times: tuple[str, ...]
    waits: tuple[Wait, ...]
    holds: tuple[HoldRow, ...]
    runs: tuple[RunRow, ...]
    dead_letters: tuple[dict[str, Any], ...]
    ledger: Ledger | None = None
    reviews: tuple[dict[str, Any], ...] = ()  # its runs awaiting a decision


def as_json(value: Any) -> Any:
    """A query result as JSON-ready data (dataclasses to objects, tuples to lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, RunDetail):
            data["cost_usd"] = value.cost_usd
        return data
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value


# -- the queue and why it waits ----------------------------------------------------------------


@dataclass
class _Context:
    """What every wait reason is judged from: one read of the state."""

    store: Store
    now: datetime
    applied: dict[str, AppliedJob]
    runtime: Runtime
    host: str = ""
    labels: frozenset[str] = frozenset()
    notes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    hosts: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Progress] = field(default_factory=dict)  # run id -> live progress

    @classmethod
    def read(
        cls, store: Store, now: datetime, host: str = "", labels: Iterable[str] = ()
    ) -> _Context:
        from agentjobs.engine import default_host
        from agentjobs.progress import running_progress

        runtime = store.runtime()
        return cls(
            store,
            now,
            store.applied(),
            runtime,
            host or default_host(),
            frozenset(labels),
            store.host_notes(),
            store.hosts(),
            running_progress(store, runtime) if any(runtime.queue) else {},
        )

    def request(self) -> ClaimRequest:
        from agentjobs.limits import Limits

        config = self.store.config()
        return ClaimRequest(
            host=self.host,
            labels=self.labels or self._known_labels(),
            now=iso(self.now) or "",
            slots=int(config.get("max_concurrent", 2)),
            host_slots=None,
            timeout=0.0,
            pid=0,
            limits=Limits.from_config(config),
        )

    def _known_labels(self) -> frozenset[str]:
        """Every label some host has (on a shared store); labels are judged per host there."""
        return frozenset(label for h in self.hosts for label in h.get("labels", ()))


def waits(store: Store, now: datetime, *, host: str = "", labels: Iterable[str] = ()) -> list[Wait]:
    """Every queued or running item with why it waits, in claim order."""
    return _waits(_Context.read(store, now, host, labels))


def _waits(ctx: _Context) -> list[Wait]:
    from agentjobs.store.eligibility import in_order, refusal

    items = list(ctx.runtime.queue.values())
    running = {i.lock_key: i for i in items if i.state == "running"}
    request = ctx.request()
    stamp = request.now
    config = ctx.store.config()
    slots_taken = sum(1 for i in items if i.state == "running")
    slots = int(config.get("max_concurrent", 2))
    ledger = json.loads(json.dumps(ctx.runtime.ledger))  # judged on a copy: a read changes nothing
    out = []
    for item in [i for i in items if i.state == "running"] + list(
        in_order([i for i in items if i.state == "queued"])
    ):
        from agentjobs.progress import describe_progress

        kind, reason = _why(item, ctx, running, request, ledger, refusal)
        live = ctx.progress.get(item.run_id) if item.state == "running" else None
        if kind == "ready" and slots_taken >= slots:
            kind, reason = "slots", f"all {slots} concurrency slots are in use"
        if kind == "ready" and item.not_before > stamp:
            kind = "retry" if item.trigger == "retry" else "scheduled"
            reason = f"{'retry ' if kind == 'retry' else ''}not before {item.not_before}"
        out.append(
            Wait(
                item.id,
                item.run_id,
                item.job,
                item.attempt,
                item.trigger,
                str(item.state),
                item.queued_at,
                item.not_before,
                item.lock_key,
                kind,
                reason,
                item.started_at,
                item.host,
                live,
                describe_progress(live, ctx.now) if live is not None else None,
            )
        )
    return out


def _why(
    item: QueueItem,
    ctx: _Context,
    running: Mapping[str, QueueItem],
    request: ClaimRequest,
    ledger: dict[str, Any],
    refusal: Any,
) -> tuple[str, str]:
    if item.state == "running":
        return "running", f"running attempt {item.attempt} since {item.started_at}"
    job = ctx.applied.get(item.job)
    allowed = refusal(
        job,
        ctx.runtime.jobs.get(item.job),
        ctx.runtime.holds,
        request,
        other_hosts=False,
        ledger=ledger,
    )
    reason = allowed.reason
    if reason is None:
        holder = running.get(item.lock_key)
        if holder is not None:
            return "key", (
                f"lock key {item.lock_key} is held by run {holder.run_id} of job {holder.job} "
                f"since {holder.started_at}"
            )
        notes = ctx.notes.get(item.id)
        if notes:
            return "host", "; ".join(f"{h}: {why}" for h, why in notes)
        return "ready", "ready: the next tick runs it"
    for prefix, kind in (
        ("held: budget", "budget"),
        ("held: rate", "rate"),
        ("held:", "usage"),
        ("host:", "host"),
        ("its job is no longer applied", "gone"),
    ):
        if reason.startswith(prefix):
            return kind, reason.removeprefix("host:").strip()
    if reason.endswith("is paused"):
        return "paused", reason
    if reason.endswith("is disabled"):
        return "disabled", reason
    return "host", reason


# -- jobs --------------------------------------------------------------------------------------


def jobs(store: Store, now: datetime) -> list[JobRow]:
    """One row per applied job, by name."""
    ctx = _Context.read(store, now)
    return _rows(ctx, _waits(ctx), _open_dead_letters(store), _pending_reviews(store))


def _open_dead_letters(store: Store) -> list[dict[str, Any]]:
    return [e for e in store.dead_letters() if e.get("status", "open") == "open"]


def _pending_reviews(store: Store) -> list[dict[str, Any]]:
    return [e for e in store.reviews() if e.get("status") == "pending"]


def _rows(
    ctx: _Context,
    all_waits: list[Wait],
    dead: list[dict[str, Any]],
    reviews: list[dict[str, Any]],
) -> list[JobRow]:
    from agentjobs.spec import Schedule

    rows = []
    for name in sorted(ctx.applied):
        job = ctx.applied[name]
        state = ctx.runtime.jobs.get(name)
        fresh = state is not None and state.schedule_hash == job.schedule_hash
        enabled = bool(job.spec.get("enabled", True))
        paused = bool(state and state.paused)
        mine = [w for w in all_waits if w.job == name]
        queued = [w for w in mine if w.state == "queued"]
        times = [w.not_before for w in queued]
        if fresh and state is not None and state.next_due and enabled and not paused:
            times.append(state.next_due)
        schedule = job.spec.get("schedule")
        held = next((w.reason for w in queued if w.kind in ("usage", "budget", "rate")), None)
        rows.append(
            JobRow(
                job=name,
                schedule=Schedule(**schedule).describe() if schedule else "manual",
                enabled=enabled,
                paused=paused,
                lock=str(job.spec.get("lock")),
                next=min(times) if times else None,
                last=state.last_started if state else None,
                result=state.last_outcome if state else None,
                running=tuple(w for w in mine if w.state == "running"),
                queued=len(queued),
                waiting=queued[0].reason if queued else None,
                held=held,
                dead_letters=sum(1 for e in dead if e.get("job") == name),
                reviews=sum(1 for e in reviews if e.get("job") == name),
                needs=tuple(job.parsed.needs),
                skipped_by=tuple(
                    (host, reason) for w in mine for host, reason in ctx.notes.get(w.item_id, ())
                ),
            )
        )
    return rows


# -- holds and the ledger ----------------------------------------------------------------------


def holds(store: Store, now: datetime) -> list[HoldRow]:
    """Usage-limit holds in force (by account), then the budgets and rates holding items."""
    ctx = _Context.read(store, now)
    return _holds(ctx, _waits(ctx))


def _holds(ctx: _Context, all_waits: list[Wait]) -> list[HoldRow]:
    stamp = iso(ctx.now) or ""
    out = []
    for key, until in sorted(ctx.runtime.holds.items()):
        if until <= stamp:
            continue
        held = tuple(
            sorted(
                {
                    n
                    for n, j in ctx.applied.items()
                    if j.parsed.agent is not None and j.parsed.agent.key == key
                }
            )
        )
        out.append(HoldRow("usage", key, until, f"{key} usage limit until {until}", held))
    seen: dict[str, list[str]] = {}
    for w in all_waits:
        if w.kind in ("budget", "rate"):
            seen.setdefault(w.reason, []).append(w.job)
    for reason, names in seen.items():
        kind = "budget" if reason.startswith("held: budget") else "rate"
        # "held: budget account claude ($...)" / "held: rate account:claude 20/5h until ..."
        scope = reason.split(" (")[0][13:] if kind == "budget" else reason.split()[2]
        until = reason.rsplit(" until ", 1)[-1]
        out.append(
            HoldRow(kind, scope, until, reason.removeprefix("held: "), tuple(sorted(set(names))))
        )
    return out


def ledger(store: Store, now: datetime) -> Ledger:
    """Spend today by scope (`job:NAME`, `account:KEY`, `total`), and every per-day cap."""
    from agentjobs.limits import Limits, spend_today

    limits = Limits.from_config(store.config())
    day, _ = limits.day(now)
    caps: dict[str, float] = {}
    if limits.budget and limits.budget.per_day:
        caps["total"] = limits.budget.per_day
    for key, budget in limits.accounts.items():
        if budget.per_day:
            caps[f"account:{key}"] = budget.per_day
    for name, job in store.applied().items():
        if job.parsed.budget and job.parsed.budget.per_day:
            caps[f"job:{name}"] = job.parsed.budget.per_day
    return Ledger(day, spend_today(store.runtime().ledger, limits, now), caps)


# -- history and runs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """Which records `history` shows: by job, outcome, lock keys, time."""

    job: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    locks: frozenset[str] | None = None  # None: any lock key

    def match(self, record: Mapping[str, Any], floor: str) -> bool:
        return (
            record.get("event") in ("attempt_finished", "slot_skipped", "cancelled")
            and (self.job is None or record.get("job") == self.job)
            and (self.outcome is None or record.get("outcome") == self.outcome)
            and (self.locks is None or record.get("lock_key") in self.locks)
            and str(record.get("time", "")) >= floor
        )


def records(store: Store, wanted: Filters, limit: int | None = 50) -> list[dict[str, Any]]:
    """The finished-attempt, skipped-slot and cancelled-run records `wanted` matches, oldest
    first (the newest `limit`), as stored."""
    floor = iso(wanted.since) or ""
    found: list[dict[str, Any]] = []
    for record in store.records(wanted.since, newest_first=True):
        if limit is not None and len(found) >= limit:
            break
        if wanted.match(record, floor):
            found.append(record)
    found.reverse()
    return found


def history(
    store: Store,
    *,
    job: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    lock: str | None = None,
    limit: int | None = 50,
) -> list[RunRow]:
    """Finished attempts, skipped slots and runs cancelled while queued matching the filters,
    oldest first (the newest `limit`)."""
    wanted = Filters(job, outcome, since, frozenset([lock]) if lock is not None else None)
    return [run_row(r) for r in records(store, wanted, limit)]


def locks_of(store: Store, lock: str | None, workdir: str | None) -> frozenset[str] | None:
    """The lock keys `--lock` and `--workdir` stand for (a workdir: the lock keys of the jobs
    working there, and the directory itself, a job's default key); None: no filter."""
    if lock is None and workdir is None:
        return None
    keys: set[str] = set() if lock is None else {lock}
    if workdir is not None:
        import os

        where = os.path.realpath(os.path.expanduser(workdir))
        keys.add(where)
        keys |= {job.parsed.lock for job in store.applied().values() if job.parsed.workdir == where}
    return frozenset(keys)


def ever_ran(store: Store, job: str, days: int = 30) -> bool:
    """Whether `job` has records in the last `days` (a job deleted since still has history)."""
    from datetime import UTC

    since = datetime.now(UTC) - timedelta(days=days)
    return any(r.get("job") == job for r in store.records(since, newest_first=True))


def run_row(record: Mapping[str, Any]) -> RunRow:
    facts = record.get("agent") or {}
    turns = facts.get("turns", facts.get("num_turns"))
    cost = record.get("cost_usd")
    return RunRow(
        time=str(record.get("time", "")),
        job=str(record.get("job", "")),
        run_id=str(record.get("run_id", "")),
        attempt=int(record.get("attempt") or 0),
        trigger=str(record.get("trigger", "")),
        outcome=str(record.get("outcome", "")),
        duration_s=record.get("duration_s"),
        detail=str(record.get("error") or _skip_detail(record) or record.get("reason") or ""),
        lock_key=str(record.get("lock_key", "")),
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        cost_estimated=bool(record.get("cost_estimated")),
        turns=turns if isinstance(turns, int) else None,
        event=str(record.get("event", "")),
    )


def _skip_detail(record: Mapping[str, Any]) -> str | None:
    """A skip record that stands for several slots: the reason, how many, from when to when."""
    count = record.get("count")
    if record.get("event") != "slot_skipped" or not isinstance(count, int) or count < 2:
        return None
    about = "" if record.get("count_exact", True) else "about "
    span = f"{record.get('first')} to {record.get('last')}"
    return f"{record.get('reason')}: {about}{count} slots, {span}"


def run_ids(store: Store, now: datetime, days: int = 30) -> list[str]:
    """Run ids a short id may stand for: queued, running, dead-lettered, recorded lately."""
    seen: dict[str, None] = {}
    for item in store.runtime().queue.values():
        seen[item.run_id] = None
    for entry in store.dead_letters():
        seen[str(entry.get("run_id") or entry.get("id"))] = None
    for record in store.records(now - timedelta(days=days)):
        if record.get("run_id"):
            seen[str(record["run_id"])] = None
    return list(seen)


def run(store: Store, run_id: str, now: datetime, days: int = 30) -> RunDetail | None:
    """One run's records (the last `days`), where it stands and its dead letter; None when
    nothing is known of it."""
    found = tuple(r for r in store.records(now - timedelta(days=days)) if r.get("run_id") == run_id)
    wait = next((w for w in waits(store, now) if w.run_id == run_id), None)
    dead = store.dead_letter(run_id)
    if not found and wait is None and dead is None:
        return None
    job = found[0]["job"] if found else wait.job if wait else str((dead or {}).get("job"))
    return RunDetail(run_id, str(job), found, wait, dead)


# -- one job -----------------------------------------------------------------------------------


def describe(
    store: Store,
    name: str,
    now: datetime,
    *,
    jobs_dir: Path | None = None,
    runs: int = 10,
    fires: int = 5,
) -> JobDetail | None:
    """Everything about job `name` as applied, and how its file in `jobs_dir` differs (edits
    not applied yet). None when no such job is applied."""
    return _detail(store, name, now, jobs_dir, fires, lambda: history(store, job=name, limit=runs))


def _detail(
    store: Store,
    name: str,
    now: datetime,
    jobs_dir: Path | None,
    fires: int,
    recent: Callable[[], list[RunRow]],
) -> JobDetail | None:
    """A job's `JobDetail`, its recent runs from `recent()` (`describe`, `job_detail`)."""
    ctx = _Context.read(store, now)
    job = ctx.applied.get(name)
    if job is None:
        return None
    file, drift = _drift(job, jobs_dir)
    all_waits = _waits(ctx)
    dead = _open_dead_letters(store)
    reviews = [e for e in _pending_reviews(store) if e.get("job") == name]
    row = next(r for r in _rows(ctx, all_waits, dead, reviews) if r.job == name)
    return JobDetail(
        job=name,
        spec=dict(job.spec),
        file=file,
        drift=tuple(drift),
        row=row,
        fire_times=tuple(_fire_times(job, now, fires)),
        waits=tuple(w for w in all_waits if w.job == name),
        holds=tuple(h for h in _holds(ctx, all_waits) if name in h.jobs),
        runs=tuple(recent()),
        dead_letters=tuple(e for e in dead if e.get("job") == name),
        ledger=ledger(store, now) if job.parsed.agent is not None else None,
        reviews=tuple(reviews),
    )


def _fire_times(job: AppliedJob, now: datetime, count: int) -> list[str]:
    """The next `count` times the schedule fires (with the job's jitter); `every` counts from
    the next due time on."""
    from agentjobs.schedule import fire_time, next_slot

    schedule = job.parsed.schedule
    if schedule is None or not job.parsed.enabled:
        return []
    out: list[str] = []
    moment: datetime | None = now
    for _ in range(count):
        assert moment is not None
        slot = next_slot(schedule, moment, moment if out and schedule.every else None)
        if slot is None:
            break
        out.append(iso(fire_time(job.name, schedule, slot)) or "")
        moment = slot
    return out


def _drift(job: AppliedJob, jobs_dir: Path | None) -> tuple[str | None, list[str]]:
    """Where the job's file is now and `path: applied -> file` for each field it changed since
    `apply` (as `plan` shows them); a prompt file edited since counts too (attempts read it
    when they start, so that edit is already live)."""
    import os

    from agentjobs.reconcile import diff
    from agentjobs.validate import load_jobs_dir

    changes: list[str] = []
    agent = job.parsed.agent
    if agent is not None and agent.prompt_file:
        try:
            changed = os.stat(agent.prompt_file).st_mtime > parse(job.applied_at).timestamp()
        except (OSError, ValueError):
            changed = False
        if changed:
            changes.append(
                f"agent.prompt_file: {agent.prompt_file} edited since it was applied "
                "(attempts read it as they start: the edit is live)"
            )
    if jobs_dir is None or not jobs_dir.is_dir():
        return None, changes
    loaded = load_jobs_dir(jobs_dir)
    mine = next((j for j in loaded.jobs if j.spec.name == job.name), None)
    if mine is None:
        if loaded.ok:
            changes.append(f"(file): no job file in {jobs_dir} defines {job.name} any more")
        return None, changes
    changes += [f"{c.path}: {_short(c.old)} -> {_short(c.new)}" for c in diff(job.spec, mine.data)]
    if mine.source != job.source:
        changes.append(f"(source): {job.source} -> {mine.source}")
    return mine.source, changes


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# -- short ids ---------------------------------------------------------------------------------


def resolve_run(store: Store, text: str) -> str:
    """The run id `text` names (`ids.resolve_run`), among the runs queued or running and those
    in the records (a prefix of a finished run must not name a running one by chance: ULIDs
    of one minute share their first characters). A whole id of a queued or running run is
    taken as it is, without reading the records."""
    from agentjobs import ids

    live = {i.run_id: f"job {i.job}, {i.state}" for i in store.runtime().queue.values()}
    if text in live:
        return text
    known = {run_id: describe_end(end) for run_id, end in run_ends(store, text).items()}
    known.update(live)
    return ids.resolve_run(text, known)


def resolve_dead_letter(store: Store, text: str) -> str:
    """The dead letter `text` names: its whole id (looked up alone), or a unique prefix of one
    (`ids.resolve_run`, among every entry)."""
    return _resolve_entry(
        text, store.dead_letter, store.dead_letters, "no dead letter", "agentjobs dlq list"
    )


def review_of(store: Store, run_id: str) -> Review | None:
    """The review-inbox entry of run `run_id` (exact id), if its work waits or waited for a
    person; what the run page links to."""
    found = store.review(run_id)
    return None if found is None else Review.from_dict(found)


def resolve_review(store: Store, text: str) -> str:
    """The review-inbox entry `text` names (a run id or a unique prefix of one)."""
    return _resolve_entry(
        text, store.review, store.reviews, "no run in the review inbox", "agentjobs review list"
    )


def _resolve_entry(
    text: str,
    one: Callable[[str], dict[str, Any] | None],
    every: Callable[[], list[dict[str, Any]]],
    missing: str,
    listing: str,
) -> str:
    from agentjobs import ids

    if one(text) is not None:
        return text
    entries = {str(e["id"]): f"job {e.get('job')}, {e.get('status')}" for e in every()}
    wanted = text.strip().upper()
    if not wanted or not any(i.upper().startswith(wanted) for i in entries):
        raise UserError(f"{missing} {text!r}; see `{listing}`")
    return ids.resolve_run(text, entries)


def run_ends(store: Store, prefix: str) -> dict[str, dict[str, Any]]:
    """The last record that ended each run (or its attempt) whose id starts with `prefix`, by
    run id: one pass over the records, kept only for matching ids."""
    wanted = prefix.strip().upper()
    ends: dict[str, dict[str, Any]] = {}
    kinds = ("attempt_finished", "dead_lettered", "cancelled", "slot_skipped")
    for record in store.records():
        run_id = record.get("run_id")
        if isinstance(run_id, str) and run_id.upper().startswith(wanted):
            if record.get("event") in kinds:
                ends[run_id] = record
            else:
                ends.setdefault(run_id, record)
    return ends


def describe_end(end: Mapping[str, Any]) -> str:
    """How a run ended, from its last record: "job fix, succeeded at T"."""
    event, job, when = end.get("event"), end.get("job"), end.get("time")
    if event == "dead_lettered":
        return f"job {job}, dead-lettered at {when}"
    if event == "cancelled" or end.get("outcome") == "cancelled":
        return f"job {job}, cancelled by {end.get('by') or '?'} at {when}"
    if event == "slot_skipped":
        return f"job {job}, skipped ({end.get('reason')}) at {when}"
    if event == "attempt_finished":
        return f"job {job}, {end.get('outcome')} at {when}"
    return f"job {job}, {str(event).replace('_', ' ')} at {when}"


# -- the dashboard (issue 14): parsed record days, the timeline, the overview, pages of runs,
# dead letters by cause, one run with its logs, and what changed since the last look ----------


@runtime_checkable
class _DayStore(Protocol):
    """What the day cache needs from a backend (both have it): the record days with a
    signature each, and one day's records after a mark."""

    def record_days(self) -> dict[str, tuple[int, int]]: ...

    def day_records_after(self, day: str, mark: int) -> tuple[list[dict[str, Any]], int]: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    """One record as the dashboard reads it: what the timeline, the pages of runs and the event
    feed need, without the output tail or the agent's facts (parsed days stay in memory)."""

    event: str
    time: str
    run_id: str
    job: str
    attempt: int
    lock_key: str
    trigger: str
    started_at: str
    finished_at: str
    queued_at: str
    next: str
    hold: str  # the usage-limit key this attempt put on hold, "" for none
    hold_until: str  # when that hold lifts
    row: RunRow | None  # attempt_finished and slot_skipped: the history row
    queued_s: float = 0.0  # the times as epoch seconds (parsed once, when the day is read)
    started_s: float = 0.0
    finished_s: float = 0.0


_DETAIL_KEPT = 300  # characters of an error kept in memory per entry


def _entry(record: Mapping[str, Any]) -> _Entry:
    import sys

    event = sys.intern(str(record.get("event", "")))
    row = run_row(record) if event in ("attempt_finished", "slot_skipped") else None
    if row is not None and len(row.detail) > _DETAIL_KEPT:
        row = dataclasses.replace(row, detail=row.detail[: _DETAIL_KEPT - 3] + "...")
    hold = str(record.get("hold") or "")
    return _Entry(
        event=event,
        time=str(record.get("time", "")),
        run_id=str(record.get("run_id", "")),
        job=sys.intern(str(record.get("job", ""))),
        attempt=int(record.get("attempt") or 0),
        lock_key=sys.intern(str(record.get("lock_key", ""))),
        trigger=sys.intern(str(record.get("trigger", ""))),
        started_at=str(record.get("started_at") or ""),
        finished_at=str(record.get("finished_at") or ""),
        queued_at=str(record.get("queued_at") or ""),
        next=str(record.get("next") or ""),
        hold=hold,
        hold_until=str(record.get("hold_until") or record.get("next_attempt_at") or "")
        if hold
        else "",
        row=row,
        queued_s=_epoch(record.get("queued_at")),
        started_s=_epoch(record.get("started_at")),
        finished_s=_epoch(record.get("finished_at")),
    )


def _epoch(text: Any) -> float:
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else 0.0
    except ValueError:
        return 0.0


@dataclass(slots=True)
class _Day:
    signature: tuple[int, int]
    mark: int
    entries: list[_Entry]
    finished: list[_Entry]  # the attempt_finished entries (what the timeline draws)


class DayCache:
    """Parsed record days for a reader that comes back often (the dashboard).

    A day is parsed once and kept while its signature (`record_days`: size and mtime of the day
    file; count and newest seq on PostgreSQL) stays the same; a day that grew is read from the
    mark where the last read ended (`day_records_after`), so today costs what was appended
    since, not the whole day again. At most `days` days are kept, the least recently used
    leaving first: memory stays flat however many pages are loaded. Thread-safe (a server's
    worker threads share one)."""

    def __init__(self, days: int = 16) -> None:
        self.days = days
        self.parsed = 0  # records parsed so far (the tests and the benchmark read it)
        self._kept: OrderedDict[tuple[str, str], _Day] = OrderedDict()
        self._lock = threading.Lock()
        self._reading = threading.Lock()

    def signatures(self, store: Store) -> dict[str, tuple[int, int]]:
        """Every day that has records, with its signature (empty when the store has none)."""
        if not isinstance(store, _DayStore) or not store.exists():
            return {}
        return store.record_days()

    def entries(
        self,
        store: Store,
        days: Sequence[str],
        signatures: Mapping[str, tuple[int, int]],
        finished: bool = False,
    ) -> dict[str, list[_Entry]]:
        """The entries of each of `days` (that has records), oldest first; with `finished`,
        only the attempt_finished ones."""
        out: dict[str, list[_Entry]] = {}
        if not isinstance(store, _DayStore):  # no day files: read from the first day on
            for record in store.records(parse(f"{min(days)}T00:00:00+00:00") if days else None):
                day = str(record.get("time", ""))[:10]
                if day in days and (not finished or record.get("event") == "attempt_finished"):
                    out.setdefault(day, []).append(_entry(record))
            return out
        where = store.describe()
        for day in days:
            signature = signatures.get(day)
            if signature is None:
                continue
            key = (where, day)
            with self._lock:
                kept = self._kept.get(key)
                if kept is not None:
                    self._kept.move_to_end(key)
            if kept is None or kept.signature != signature:
                with self._reading:  # one reader parses a day; the others wait and take it
                    with self._lock:
                        kept = self._kept.get(key)
                    if kept is None or kept.signature != signature:
                        kept = self._read(store, day, signature, kept)
                        with self._lock:
                            self._kept[key] = kept
                            self._kept.move_to_end(key)
                            while len(self._kept) > self.days:
                                self._kept.popitem(last=False)
            out[day] = kept.finished if finished else kept.entries
        return out

    def _read(
        self, store: _DayStore, day: str, signature: tuple[int, int], kept: _Day | None
    ) -> _Day:
        # grown: read what was appended; shrunk (archived, cut back) or unknown: all of it
        grew = kept is not None and signature[0] >= kept.signature[0]
        records, mark = store.day_records_after(day, kept.mark if grew and kept else 0)
        entries = (list(kept.entries) if grew and kept else []) + [_entry(r) for r in records]
        if grew and getattr(store, "records_with_state", False) and len(entries) != signature[0]:
            # a transaction that committed out of seq order left a record behind the mark
            records, mark = store.day_records_after(day, 0)
            entries = [_entry(r) for r in records]
        self.parsed += len(records)
        return _Day(signature, mark, entries, [e for e in entries if e.event == "attempt_finished"])


def _days_between(first: datetime, last: datetime) -> list[str]:
    day = first.astimezone(UTC).date()
    end = last.astimezone(UTC).date()
    out = []
    while day <= end:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


# -- the timeline ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """An attempt on the timeline (or, where a lane has more than fit, `attempts` of them in a
    row merged: `outcome` is then the worst of theirs)."""

    run_id: str
    job: str
    attempt: int
    start: str
    end: str
    outcome: str  # an outcome, or "running"
    trigger: str = ""
    duration_s: float | None = None
    cost_usd: float | None = None
    attempts: int = 1
    row: int = 0  # sub-row in a lane whose runs may overlap (worktree runs)


@dataclass(frozen=True, slots=True)
class Band:
    """A period drawn under a lane's bars: a run waiting in the queue, or a usage-limit hold."""

    kind: str  # wait | hold
    start: str
    end: str
    label: str
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class Lane:
    """One lock key (a working directory): its jobs, attempts and periods. Bars in a lane
    never overlap (DESIGN.md invariant 1), except in a lane of worktree runs (`shared`),
    where each run has a key of its own and the bars are stacked in rows."""

    key: str
    jobs: tuple[str, ...]
    bars: tuple[Bar, ...]
    bands: tuple[Band, ...]
    shared: bool = False
    rows: int = 1


@dataclass(frozen=True, slots=True)
class Timeline:
    start: str
    end: str
    now: str
    lanes: tuple[Lane, ...]
    days_read: tuple[str, ...]


_WORST = (
    "lost",
    "timeout",
    "silence",
    "failed",
    "verify_failed",
    "no_change",
    "budget",
    "rate_limited",
    "interrupted",
    "cancelled",
    "skipped",
    "running",
    "awaiting_review",
    "succeeded",
)


def _worst(outcomes: Iterable[str]) -> str:
    rank = {o: i for i, o in enumerate(_WORST)}
    return min(outcomes, key=lambda o: rank.get(o, 0))


def timeline(
    store: Store,
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    cache: DayCache | None = None,
    max_bars: int = 600,
) -> Timeline:
    """The attempts of every lock key between `start` and `end`, one lane per key, with the
    periods runs waited in the queue and usage-limit holds. Reads the record days of the
    window (and the day after it: attempts that started inside and ended after), never the
    whole history. A lane with more than `max_bars` attempts merges neighbours into one bar;
    a wait shorter than 1/2000 of the window (less than half a pixel) is left out."""
    cache = cache or DayCache(days=0)
    signatures = cache.signatures(store)
    days = [d for d in _days_between(start, end + timedelta(days=1)) if d in signatures]
    entries = cache.entries(store, days, signatures, finished=True)
    finished: dict[tuple[str, int], _Entry] = {}
    for day in days:
        for e in entries.get(day, ()):
            if e.row is not None:
                finished.setdefault((e.run_id, e.attempt), e)
    drawing = _Drawing(start, end, now, finished)
    for e in finished.values():
        drawing.attempt(e)
    applied = store.applied()
    drawing.live(store.runtime(), applied)
    lanes = drawing.lanes(applied, max_bars)
    return Timeline(drawing.lo, drawing.hi, drawing.stamp, lanes, tuple(days))


class _Drawing:
    """A timeline's bars and bands by lane as they are found: finished attempts, then what
    runs, waits and is held now."""

    def __init__(
        self,
        start: datetime,
        end: datetime,
        now: datetime,
        finished: Mapping[tuple[str, int], _Entry],
    ) -> None:
        self.lo, self.hi, self.stamp = iso(start) or "", iso(end) or "", iso(now) or ""
        self.shortest = (end - start).total_seconds() / 2000
        self.finished = finished
        self.bars: dict[str, list[Bar]] = {}
        self.bands: dict[str, list[Band]] = {}
        self._lanes: dict[str, str] = {}

    def lane_of(self, lock_key: str) -> str:
        found = self._lanes.get(lock_key)
        if found is None:
            found = self._lanes[lock_key] = _lane_key(lock_key)
        return found

    def wait_from(
        self, run_id: str, attempt: int, queued_at: str, queued_s: float
    ) -> tuple[str, float]:
        """A run waits from its enqueue; a retry from the end of the attempt before."""
        before = self.finished.get((run_id, attempt - 1)) if attempt > 1 else None
        if before is not None and before.finished_s > queued_s:
            return before.finished_at, before.finished_s
        return queued_at, queued_s

    def seen(self, since: str, since_s: float, until: str, until_s: float) -> bool:
        """Whether a wait shows in the window (long enough to see)."""
        return (
            bool(since)
            and until > self.lo
            and since < self.hi
            and until_s - since_s >= self.shortest
        )

    def attempt(self, e: _Entry) -> None:
        """A finished attempt's bar, the wait before it, the usage-limit hold after it."""
        begin, stop = e.started_at or e.time, e.finished_at or e.time
        lane = self.lane_of(e.lock_key)
        row = e.row
        assert row is not None
        if begin <= self.hi and stop >= self.lo:
            self.bars.setdefault(lane, []).append(
                Bar(
                    e.run_id,
                    e.job,
                    e.attempt,
                    begin,
                    stop,
                    row.outcome,
                    e.trigger,
                    row.duration_s,
                    row.cost_usd,
                )
            )
        since, since_s = self.wait_from(e.run_id, e.attempt, e.queued_at, e.queued_s)
        if since and since < begin and self.seen(since, since_s, begin, e.started_s):
            self.bands.setdefault(lane, []).append(
                Band("wait", since, begin, f"{e.job} queued", e.run_id)
            )
        if e.hold and e.hold_until > self.lo and stop < self.hi:
            self.bands.setdefault(lane, []).append(
                Band("hold", stop, e.hold_until, f"{e.hold} usage limit", e.run_id)
            )

    def live(self, runtime: Runtime, applied: Mapping[str, AppliedJob]) -> None:
        """What runs and waits now (the queue), and the usage-limit holds in force."""
        stamp = self.stamp
        for item in runtime.queue.values():
            lane = self.lane_of(item.lock_key)
            if item.state == "running" and item.started_at and item.started_at <= self.hi:
                self.bars.setdefault(lane, []).append(
                    Bar(item.run_id, item.job, item.attempt, item.started_at, stamp, "running")
                )
            since, since_s = self.wait_from(
                item.run_id, item.attempt, item.queued_at, _epoch(item.queued_at)
            )
            until = (item.started_at or stamp) if item.state == "running" else stamp
            if since and since < until and self.seen(since, since_s, until, _epoch(until)):
                self.bands.setdefault(lane, []).append(
                    Band("wait", since, until, f"{item.job} queued", item.run_id)
                )
        for key, until in runtime.holds.items():
            if until <= stamp:
                continue
            for job in applied.values():
                if job.limit_key == key:
                    lane = self.lane_of(str(job.spec.get("lock")))
                    self.bands.setdefault(lane, []).append(
                        Band("hold", stamp, until, f"{key} usage limit")
                    )

    def lanes(self, applied: Mapping[str, AppliedJob], max_bars: int) -> tuple[Lane, ...]:
        """One lane per lock key of an applied job or of a drawn bar, by key."""
        jobs_of: dict[str, set[str]] = {}
        for name, job in applied.items():
            jobs_of.setdefault(self.lane_of(str(job.spec.get("lock"))), set()).add(name)
        for lane, found in self.bars.items():
            jobs_of.setdefault(lane, set()).update(b.job for b in found)
        lanes = []
        for key in sorted(jobs_of):
            shared = key.endswith(_WORKTREE_LANE)
            mine = sorted(self.bars.get(key, ()), key=_bar_order)
            rows = 1
            if shared:
                mine, rows = _stacked(mine)
            elif len(mine) > max_bars:
                mine = _merged(mine, max_bars)
            lanes.append(
                Lane(
                    key,
                    tuple(sorted(jobs_of[key])),
                    tuple(mine),
                    tuple(sorted(self.bands.get(key, ()), key=_band_order)),
                    shared,
                    rows,
                )
            )
        return tuple(lanes)


def _bar_order(bar: Bar) -> tuple[str, int]:
    return bar.start, bar.attempt


def _band_order(band: Band) -> str:
    return band.start


_WORKTREE_LANE = " (worktree runs)"


def _lane_key(lock_key: str) -> str:
    """Worktree runs hold a key of their own (`LOCK#worktree-RUN`): one lane for all of them."""
    base, sep, _ = lock_key.partition("#worktree-")
    return base + _WORKTREE_LANE if sep else lock_key


def _stacked(bars: list[Bar]) -> tuple[list[Bar], int]:
    """Each bar in the first row where it overlaps nothing."""
    row_ends: list[str] = []
    out = []
    for bar in bars:
        row = next((i for i, e in enumerate(row_ends) if e <= bar.start), len(row_ends))
        if row == len(row_ends):
            row_ends.append(bar.end)
        row_ends[row] = bar.end
        out.append(dataclasses.replace(bar, row=row))
    return out, max(1, len(row_ends))


def _merged(bars: list[Bar], limit: int) -> list[Bar]:
    """About `limit` bars: runs of consecutive attempts merged, worst outcome shown."""
    size = -(-len(bars) // limit)
    out = []
    for i in range(0, len(bars), size):
        group = bars[i : i + size]
        if len(group) == 1:
            out.append(group[0])
            continue
        cost = sum(b.cost_usd or 0.0 for b in group)
        out.append(
            Bar(
                group[0].run_id,
                ", ".join(sorted({b.job for b in group})),
                0,
                group[0].start,
                max(b.end for b in group),
                _worst(b.outcome for b in group),
                duration_s=sum(b.duration_s or 0.0 for b in group),
                cost_usd=round(cost, 6),
                attempts=len(group),
            )
        )
    return out


# -- the overview ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overview:
    """The morning question: what runs, what waits and why, what failed today, what needs me,
    what it cost; the next runs."""

    now: str
    day: str  # the config's day (budgets' time zone)
    jobs: tuple[JobRow, ...]
    running: tuple[Wait, ...]
    queued: tuple[Wait, ...]
    finished_today: int
    failed_today: tuple[RunRow, ...]
    dead_letters: tuple[dict[str, Any], ...]
    holds: tuple[HoldRow, ...]
    ledger: Ledger
    spend_today: float
    spend_estimated: bool
    next_runs: tuple[JobRow, ...]


def overview(store: Store, now: datetime, *, cache: DayCache | None = None) -> Overview:
    """Everything the overview shows, from one read of the state and today's records."""
    from agentjobs.limits import Limits

    cache = cache or DayCache(days=0)
    ctx = _Context.read(store, now)
    all_waits = _waits(ctx)
    dead = _open_dead_letters(store)
    rows = _rows(ctx, all_waits, dead, _pending_reviews(store))
    limits = Limits.from_config(ctx.store.config())
    day, following = limits.day(now)
    began = following - timedelta(days=1)
    floor = iso(began) or ""
    signatures = cache.signatures(store)
    days = [d for d in _days_between(began, now) if d in signatures]
    finished = [
        e.row
        for entries in cache.entries(store, days, signatures).values()
        for e in entries
        if e.event == "attempt_finished" and e.row is not None and e.time >= floor
    ]
    # a run awaiting review succeeded; what lands is a person's decision (the inbox)
    failed = [r for r in finished if r.outcome not in ("succeeded", "cancelled", "awaiting_review")]
    spend = sum(r.cost_usd or 0.0 for r in finished)
    soon = sorted((r for r in rows if r.next), key=lambda r: r.next or "")
    return Overview(
        now=iso(now) or "",
        day=day,
        jobs=tuple(rows),
        running=tuple(w for w in all_waits if w.state == "running"),
        queued=tuple(w for w in all_waits if w.state == "queued"),
        finished_today=len(finished),
        failed_today=tuple(sorted(failed, key=_newest_first)),
        dead_letters=tuple(sorted(dead, key=lambda e: str(e.get("created_at")), reverse=True)),
        holds=tuple(_holds(ctx, all_waits)),
        ledger=ledger(store, now),
        spend_today=round(spend, 6),
        spend_estimated=any(r.cost_estimated for r in finished),
        next_runs=tuple(soon[:10]),
    )


def _newest_first(row: RunRow) -> tuple[float, str]:
    return -_epoch(row.time), row.run_id


# -- pages of runs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunsPage:
    """Finished attempts and skipped slots, newest first; `older` continues the list (a
    cursor, `DAY.INDEX`), None at the first record."""

    rows: tuple[RunRow, ...]
    older: str | None
    days_read: tuple[str, ...]


def runs_page(
    store: Store,
    *,
    job: str | None = None,
    lock: str | None = None,
    outcome: str | None = None,
    older: str | None = None,
    limit: int = 50,
    max_days: int = 7,
    cache: DayCache | None = None,
) -> RunsPage:
    """One page of `history`, newest first, reading at most `max_days` record days: a filter
    that matches little costs a few days a page, never a scan of all history (the page says
    where to go on)."""
    cache = cache or DayCache(days=0)
    day_from, _, index_text = (older or "").partition(".")
    signatures = cache.signatures(store)
    days = sorted((d for d in signatures if not day_from or d <= day_from), reverse=True)
    rows: list[RunRow] = []
    read: list[str] = []
    cursor: str | None = None
    for n, day in enumerate(days):
        if n >= max_days:
            cursor = day  # go on from the end of this day
            break
        read.append(day)
        entries = cache.entries(store, [day], signatures).get(day, [])
        top = len(entries)
        if day == day_from and index_text.isdigit():
            top = min(top, int(index_text))
        for i in range(top - 1, -1, -1):
            row = entries[i].row
            if (
                row is not None
                and (job is None or row.job == job)
                and (outcome is None or row.outcome == outcome)
                and (lock is None or row.lock_key == lock)
            ):
                rows.append(row)
                if len(rows) >= limit:
                    cursor = f"{day}.{i}" if i > 0 else (days[n + 1] if n + 1 < len(days) else None)
                    break
        if len(rows) >= limit:
            break
    return RunsPage(tuple(rows), cursor, tuple(read))


# -- dead letters by cause ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetterGroup:
    """Dead letters whose last attempt failed the same way (numbers and ids masked)."""

    cause: str
    outcome: str
    entries: tuple[dict[str, Any], ...]


def dead_letter_groups(store: Store, *, resolved: bool = False) -> list[DeadLetterGroup]:
    """Open dead letters (and replayed or resolved ones with `resolved`) grouped by cause,
    the biggest group first, newest first within one."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in store.dead_letters():
        if not resolved and entry.get("status", "open") != "open":
            continue
        attempts = entry.get("attempts") or [{}]
        last = attempts[-1] if isinstance(attempts[-1], dict) else {}
        outcome = str(last.get("outcome") or "")
        groups.setdefault((outcome, dead_letter_cause(entry)), []).append(entry)
    out = [
        DeadLetterGroup(
            cause,
            outcome,
            tuple(sorted(found, key=lambda e: str(e.get("created_at")), reverse=True)),
        )
        for (outcome, cause), found in groups.items()
    ]
    return sorted(out, key=lambda g: (-len(g.entries), g.cause))


def dead_letter_cause(entry: Mapping[str, Any]) -> str:
    """What a dead letter's last attempt died of, with what varies (numbers, ids, hashes,
    paths' run ids) masked, so the same failure on different runs reads the same."""
    import re

    attempts = entry.get("attempts") or [{}]
    last = attempts[-1] if isinstance(attempts[-1], dict) else {}
    text = str(last.get("error") or entry.get("reason") or last.get("outcome") or "unknown")
    first = text.strip().splitlines()[0] if text.strip() else "unknown"
    masked = re.sub(r"[0-9A-HJKMNP-TV-Z]{26}", "<run>", first)
    masked = re.sub(r"\b[0-9a-f]{7,40}\b", "<hash>", masked)
    masked = re.sub(r"\d+(\.\d+)?", "N", masked)
    return masked[:160]


# -- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptLog:
    """An attempt's log as the run page shows it: the last `max_bytes`, and the output of
    `verify` apart (the runner writes it after an `[agentjobs] verify` line)."""

    attempt: int
    path: str
    exists: bool
    size: int
    text: str
    cut: int  # bytes left out at the start
    verify: str | None


@dataclass(frozen=True, slots=True)
class RunView:
    """One run for its page and `GET /api/runs/{id}`: where it stands (`state`), its records
    (the `attempt_finished` of each attempt, oldest first), the item that is queued or running,
    its dead letter."""

    detail: RunDetail
    state: str  # queued | running | retrying | dead_lettered | replayed | resolved | an outcome
    attempts: int
    finished: bool


def run_view(store: Store, run_id: str, now: datetime) -> RunView | None:
    """Run `run_id`: its finished attempts are found from the time in its id on (a ULID: the
    run's enqueue time), with one search of the records since then for that id (files: a byte
    search that parses only its lines; PostgreSQL: one query), not a scan of every day.
    A run whose id says another time (a `--now` replay) is looked up the slow way (`run`)."""
    started = _ulid_time(run_id)
    if started is None:
        return None
    wait = next((w for w in waits(store, now) if w.run_id == run_id), None)
    probes = [
        QueueItem(
            id=f"{run_id}.{n}",
            run_id=run_id,
            job="",
            trigger="manual",
            priority="normal",
            lock_key="",
            queued_at="",
            not_before="",
            attempt=n,
            started_at=iso(started),
        )
        for n in range(1, 101)
    ]
    found = store.finished_records(probes, now)
    records = tuple(found[key] for key in sorted(found))
    dead = store.dead_letter(run_id)
    if not records and wait is None and dead is None:
        slow = run(store, run_id, now)
        if slow is None:
            return None
        records = tuple(r for r in slow.records if r.get("event") == "attempt_finished")
        wait, dead = slow.wait, slow.dead_letter
    job = records[0]["job"] if records else wait.job if wait else str((dead or {}).get("job", ""))
    detail = RunDetail(run_id, str(job), records, wait, dead)
    return RunView(detail, *_run_state(detail))


def _run_state(detail: RunDetail) -> tuple[str, int, bool]:
    attempts = max([int(r.get("attempt") or 0) for r in detail.records] or [0])
    if detail.wait is not None:
        attempts = max(attempts, detail.wait.attempt)
        if detail.wait.state == "running":
            return "running", attempts, False
        return ("retrying" if detail.wait.attempt > 1 else "queued"), attempts, False
    if detail.dead_letter is not None:
        status = str(detail.dead_letter.get("status", "open"))
        return ("dead_lettered" if status == "open" else status), attempts, True
    if detail.records:
        return str(detail.records[-1].get("outcome", "")), attempts, True
    return "unknown", attempts, True


def _ulid_time(run_id: str) -> datetime | None:
    """When a run id (a ULID) was made: its first 10 characters are milliseconds."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    if len(run_id) != 26 or any(c not in alphabet for c in run_id):
        return None
    millis = 0
    for c in run_id[:10]:
        millis = millis * 32 + alphabet.index(c)
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


VERIFY_MARK = b"\n[agentjobs] verify\n"


def attempt_log(store: Store, run_id: str, attempt: int, max_bytes: int = 1 << 20) -> AttemptLog:
    """The last `max_bytes` of an attempt's log on this host (attempt logs stay on the host
    that ran the attempt), decoded; `verify`'s output apart."""
    path = store.log_path(run_id, attempt)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            cut = max(0, size - max_bytes)
            handle.seek(cut)
            data = handle.read(max_bytes)
    except FileNotFoundError:
        return AttemptLog(attempt, str(path), False, 0, "", 0, None)
    verify = None
    at = data.rfind(VERIFY_MARK)
    if at >= 0:
        verify = data[at + len(VERIFY_MARK) :].decode("utf-8", errors="replace")
        data = data[: at + 1]
    return AttemptLog(
        attempt, str(path), True, size, data.decode("utf-8", errors="replace"), cut, verify
    )


# -- what changed (the dashboard's live events) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What `changes` compares: the queue, each job's last attempt, the usage-limit holds."""

    items: Mapping[str, QueueItem]
    last: Mapping[str, tuple[str | None, str | None, str | None]]  # job -> run, finished, outcome
    holds: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Change:
    """One thing that happened: `queued`, `started`, `finished` (an attempt; `outcome`),
    `dead_lettered`, `held` (a usage limit until `until`), `released`."""

    kind: str
    time: str
    job: str = ""
    run_id: str = ""
    attempt: int = 0
    outcome: str = ""
    key: str = ""
    until: str = ""
    detail: str = ""


def snapshot(store: Store) -> Snapshot:
    runtime = store.runtime()
    return Snapshot(
        dict(runtime.queue),
        {
            name: (state.last_run_id, state.last_finished, state.last_outcome)
            for name, state in runtime.jobs.items()
        },
        dict(runtime.holds),
    )


def changes(store: Store, before: Snapshot, now: datetime) -> tuple[Snapshot, list[Change]]:
    """What happened between `before` and now, read from the state (the queue, each job's
    last attempt, the holds): cheap on both backends, so a server can ask every second. An
    attempt that ended is looked up in the records from its claim's mark (its outcome,
    whether it was dead-lettered); one that came and went between two looks is still seen
    through its job's last attempt."""
    after = snapshot(store)
    stamp = iso(now) or ""
    out: list[Change] = []
    for item_id, item in after.items.items():
        old = before.items.get(item_id)
        if old is None:  # new since the last look (it may be claimed already)
            out.append(
                Change("queued", item.queued_at or stamp, item.job, item.run_id, item.attempt)
            )
        if item.state == "running" and (
            old is None or old.state != "running" or old.attempt != item.attempt
        ):
            out.append(
                Change("started", item.started_at or stamp, item.job, item.run_id, item.attempt)
            )
    ended = [
        old
        for item_id, old in before.items.items()
        if old.state == "running"
        and (
            (new := after.items.get(item_id)) is None
            or new.attempt != old.attempt
            or new.state != "running"
        )
    ]
    found = store.finished_records(ended, now) if ended else {}
    seen: set[tuple[str, int]] = set()
    for old in ended:
        record = found.get((old.run_id, old.attempt))
        if record is None:
            continue  # settled later; its job's last attempt tells (below)
        seen.add((old.run_id, old.attempt))
        out.append(_finished(record, stamp))
    for job, last in after.last.items():
        # a claim sets the run and its start; a settled attempt sets when it finished
        if last[0] is None or last[1] is None or last[1] == before.last.get(job, (None,) * 3)[1]:
            continue
        run_id = str(last[0])
        if any(run_id == r for r, _ in seen):
            if last[2] != "succeeded" and _dead(store, run_id):
                out.append(Change("dead_lettered", stamp, job, run_id, outcome=str(last[2])))
            continue
        out.append(Change("finished", last[1] or stamp, job, run_id, outcome=str(last[2] or "")))
        if last[2] != "succeeded" and _dead(store, run_id):
            out.append(Change("dead_lettered", stamp, job, run_id, outcome=str(last[2])))
    for key, until in after.holds.items():
        if before.holds.get(key) != until and until > stamp:
            out.append(Change("held", stamp, key=key, until=until))
    for key in before.holds.keys() - after.holds.keys():
        out.append(Change("released", stamp, key=key))
    return after, out


def _finished(record: Mapping[str, Any], stamp: str) -> Change:
    return Change(
        "finished",
        str(record.get("finished_at") or record.get("time") or stamp),
        str(record.get("job", "")),
        str(record.get("run_id", "")),
        int(record.get("attempt") or 0),
        str(record.get("outcome", "")),
        detail=str(record.get("next") or ""),
    )


def _dead(store: Store, run_id: str) -> bool:
    entry = store.dead_letter(run_id)
    return entry is not None and entry.get("status", "open") == "open"


def job_detail(
    store: Store,
    name: str,
    now: datetime,
    *,
    jobs_dir: Path | None = None,
    runs: int = 10,
    cache: DayCache | None = None,
) -> JobDetail | None:
    """`describe`'s `JobDetail`, its recent runs read from the newest record days (at most
    7, through the day cache) rather than searched for through all history: the dashboard's
    job page and `GET /api/jobs/{job}`. None when no such job is applied."""

    def recent() -> list[RunRow]:
        return list(reversed(runs_page(store, job=name, limit=runs, cache=cache).rows))

    return _detail(store, name, now, jobs_dir, 5, recent)
