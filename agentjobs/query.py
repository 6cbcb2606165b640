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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agentjobs.clock import iso, parse
from agentjobs.progress import Progress
from agentjobs.store import AppliedJob, ClaimRequest, QueueItem, Runtime, Store

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
    return _rows(ctx, _waits(ctx), _open_dead_letters(store))


def _open_dead_letters(store: Store) -> list[dict[str, Any]]:
    return [e for e in store.dead_letters() if e.get("status", "open") == "open"]


def _rows(ctx: _Context, all_waits: list[Wait], dead: list[dict[str, Any]]) -> list[JobRow]:
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
    ctx = _Context.read(store, now)
    job = ctx.applied.get(name)
    if job is None:
        return None
    file, drift = _drift(job, jobs_dir)
    all_waits = _waits(ctx)
    dead = _open_dead_letters(store)
    row = next(r for r in _rows(ctx, all_waits, dead) if r.job == name)
    recent = history(store, job=name, limit=runs)
    return JobDetail(
        job=name,
        spec=dict(job.spec),
        file=file,
        drift=tuple(drift),
        row=row,
        fire_times=tuple(_fire_times(job, now, fires)),
        waits=tuple(w for w in all_waits if w.job == name),
        holds=tuple(h for h in _holds(ctx, all_waits) if name in h.jobs),
        runs=tuple(recent),
        dead_letters=tuple(e for e in dead if e.get("job") == name),
        ledger=ledger(store, now) if job.parsed.agent is not None else None,
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
    """The dead letter `text` names: its whole id or a unique prefix (`ids.resolve_run`)."""
    from agentjobs import ids

    entries = {str(e["id"]): f"job {e.get('job')}, {e.get('status')}" for e in store.dead_letters()}
    if text in entries:
        return text
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
