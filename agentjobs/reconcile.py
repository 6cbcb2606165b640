"""Desired (job files) against applied (state): the plan, and applying it all-or-nothing.

Like `terraform plan`/`apply`: a plan lists create / update (with a field diff) / delete /
unchanged; `apply` re-plans under the state lock (so concurrent applies serialize and the last
one wins with a consistent state) and writes one change. Jobs whose file is gone are deleted only
with `prune`; their history and dead letters are kept either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from agentjobs.spec import GlobalConfig, JobSpec
from agentjobs.store import AppliedChange, AppliedJob, ScheduleState, Store
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
        elif current.spec_hash != job.spec.spec_hash() or current.source != job.source:
            fields = diff(current.spec, job.spec.to_dict())
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
    if schedule is None:
        return None
    if schedule.at is not None:
        slot: datetime | None = parse_at(schedule.at, "UTC")
    else:
        slot = next_slot(schedule, now, last_finished)
    return None if slot is None else fire_time(spec.name, schedule, slot)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


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
    with store.lock(lock_timeout):
        applied = store.applied()
        plan = compute_plan(desired, applied, prune, config, store.config())
        if dry_run or not plan.pending:
            return plan
        schedules = store.schedules()
        by_name = {job.spec.name: job for job in desired}
        put: dict[str, AppliedJob] = {}
        new_schedules: dict[str, ScheduleState] = {}
        stamp = _iso(now) or ""
        for change in plan.changes:
            if change.action not in (Action.CREATE, Action.UPDATE) or change.name == CONFIG_ROW:
                continue
            job = by_name[change.name]
            schedule_hash = job.spec.schedule_hash()
            put[change.name] = AppliedJob(
                name=change.name,
                spec=job.spec.to_dict(),
                spec_hash=job.spec.spec_hash(),
                schedule_hash=schedule_hash,
                source=job.source,
                applied_at=stamp,
                git_commit=git_commit,
            )
            state = schedules.get(change.name)
            if state is None or state.schedule_hash != schedule_hash:
                # A new or re-scheduled job starts over; `every` still counts from the last run.
                last_finished = state.last_finished if state else None
                finished = datetime.fromisoformat(last_finished) if last_finished else None
                due = initial_due(job.spec, now, finished)
                new_schedules[change.name] = ScheduleState(
                    schedule_hash=schedule_hash,
                    next_due=_iso(due),
                    # slots up to now are not "missed": catch-up starts from the apply
                    last_slot=stamp if due else None,
                    last_finished=last_finished,
                )
        remove = tuple(c.name for c in plan.changes if c.action == Action.DELETE)
        store.write_applied(
            AppliedChange(put=put, schedules=new_schedules, remove=remove, config=config.to_dict())
        )
        return plan
