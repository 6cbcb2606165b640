"""Desired (job files) against applied (state): the plan, and applying it all-or-nothing.

Like `terraform plan`/`apply`: a plan lists create / update (with a field diff) / delete /
unchanged; `apply` re-plans under the state lock (so concurrent applies serialize and the last
one wins with a consistent state) and writes one change. Jobs whose file is gone are deleted only
with `prune`; their history and dead letters are kept either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agentjobs.clock import iso
from agentjobs.spec import GlobalConfig, JobSpec
from agentjobs.store import AppliedChange, AppliedJob, JobState, Store

if TYPE_CHECKING:  # validate pulls in yaml; the engine imports this module on its hot path
    from agentjobs.validate import LoadedJob

CONFIG_ROW = "(global config)"


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ORPHAN = "delete (needs --prune)"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class FieldChange:
    path: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    name: str
    source: str
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]

    @property
    def pending(self) -> bool:
        """Whether applying this plan would change the state."""
        return any(c.action in (Action.CREATE, Action.UPDATE, Action.DELETE) for c in self.changes)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action and c.name != CONFIG_ROW)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping):  # an empty mapping adds no path: {} and "absent" look alike
        for key in value:
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """Field-level differences between two stored specs, by dotted path."""
    a = _flatten(old, "", {})
    b = _flatten(new, "", {})
    return tuple(
        FieldChange(path, a.get(path), b.get(path))
        for path in sorted(a.keys() | b.keys())
        if a.get(path) != b.get(path)
    )


def compute_plan(
    desired: Sequence[LoadedJob],
    applied: Mapping[str, AppliedJob],
    prune: bool,
    config: GlobalConfig | None = None,
    applied_config: Mapping[str, Any] | None = None,
) -> Plan:
    changes: list[Change] = []
    if config is not None:
        new_config = config.to_dict()
        old_config = dict(applied_config or {}) or GlobalConfig().to_dict()
        if new_config != old_config:
            changes.append(Change(Action.UPDATE, CONFIG_ROW, "", diff(old_config, new_config)))
    wanted = {job.spec.name: job for job in desired}
    for name in sorted(wanted):
        job = wanted[name]
        current = applied.get(name)
        if current is None:
            changes.append(Change(Action.CREATE, name, job.source))
        elif current.spec_hash != job.spec_hash or current.source != job.source:
            fields = diff(current.spec, job.data)
            if current.source != job.source:
                fields = (*fields, FieldChange("(source)", current.source, job.source))
            changes.append(Change(Action.UPDATE, name, job.source, fields))
        else:
            changes.append(Change(Action.UNCHANGED, name, job.source))
    for name in sorted(applied.keys() - wanted.keys()):
        action = Action.DELETE if prune else Action.ORPHAN
        changes.append(Change(action, name, applied[name].source))
    return Plan(tuple(changes))


def initial_due(spec: JobSpec, now: datetime, last_finished: datetime | None) -> datetime | None:
    """When a newly applied (or re-scheduled) job is next due, jitter included."""
    from agentjobs.schedule import fire_time, next_slot
    from agentjobs.spec import parse_at

    schedule = spec.schedule
    if schedule is None or not spec.enabled:
        return None
    if schedule.at is not None:
        slot: datetime | None = parse_at(schedule.at, "UTC")
    else:
        slot = next_slot(schedule, now, last_finished)
    return None if slot is None else fire_time(spec.name, schedule, slot)


def fresh_state(spec: JobSpec, now: datetime, previous: JobState | None) -> JobState:
    """The state of a new or re-scheduled job: its next run computed from `now`.

    The run summary is kept; `every` still counts from the previous run's end; slots up to
    `now` are not "missed" (catch-up starts from here).
    """
    last_finished = previous.last_finished if previous else None
    finished = datetime.fromisoformat(last_finished) if last_finished else None
    due = initial_due(spec, now, finished)
    base = previous or JobState(schedule_hash="")
    gap = None
    if spec.schedule is not None and due is not None:
        from agentjobs.schedule import max_gap

        gap = max_gap(spec.name, spec.schedule)
    return dataclasses.replace(
        base,
        schedule_hash=spec.schedule_hash(),
        next_due=iso(due),
        last_slot=iso(now) if due else None,
        needs=spec.needs,
        next_due_max_gap=gap,
    )


def apply_plan(
    store: Store,
    desired: Sequence[LoadedJob],
    config: GlobalConfig,
    *,
    now: datetime,
    prune: bool,
    dry_run: bool,
    lock_timeout: float,
    git_commit: str | None,
) -> Plan:
    """Plan under the state lock and, unless `dry_run`, write it. Returns the plan applied."""
    if dry_run:
        return compute_plan(desired, store.applied(), prune, config, store.config())
    with store.transaction(lock_timeout) as runtime:
        applied = store.applied()
        plan = compute_plan(desired, applied, prune, config, store.config())
        if not plan.pending:
            return plan
        by_name = {job.spec.name: job for job in desired}
        put: dict[str, AppliedJob] = {}
        stamp = iso(now) or ""
        for change in plan.changes:
            if change.action not in (Action.CREATE, Action.UPDATE) or change.name == CONFIG_ROW:
                continue
            loaded = by_name[change.name]
            put[change.name] = AppliedJob(
                name=change.name,
                spec=loaded.data,
                spec_hash=loaded.spec_hash,
                schedule_hash=loaded.schedule_hash,
                source=loaded.source,
                applied_at=stamp,
                git_commit=git_commit,
            )
            state = runtime.jobs.get(change.name)
            if state is None or state.schedule_hash != loaded.schedule_hash:
                runtime.jobs[change.name] = fresh_state(loaded.spec, now, state)
            else:
                runtime.jobs[change.name] = dataclasses.replace(state, needs=loaded.spec.needs)
        remove = tuple(c.name for c in plan.changes if c.action == Action.DELETE)
        for name in remove:
            # History and dead letters stay. Waiting runs stay in the queue until the next tick
            # records them as skipped (reason `deleted`), so every slot keeps a terminal state.
            runtime.jobs.pop(name, None)
        store.write_applied(AppliedChange(put=put, remove=remove, config=config.to_dict()))
        runtime.applied_version = store.applied_version()
        store.prepare_keys(
            str(job.spec["lock"]) for job in put.values() if job.spec.get("isolation") != "worktree"
        )
        return plan
