"""The state backend protocol and the values that cross it.

Nothing outside `agentjobs/store/` reads or writes state files (DESIGN.md). Every backend keeps the
same contract, checked by one test suite run against each (tests/test_store_contract.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class AppliedJob:
    """A job spec as applied: the stored spec and where and when it came from."""

    name: str
    spec: Mapping[str, Any]  # JobSpec.to_dict(); rebuilt with spec.job_from_dict when needed
    spec_hash: str
    schedule_hash: str
    source: str
    applied_at: str
    git_commit: str | None = None

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


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """Where a job's schedule stands. Times are UTC ISO-8601 strings.

    `next_due` is precomputed (at apply and after each run) so a tick with nothing due compares
    timestamps and imports no schedule machinery (STYLE.md rule 14). `schedule_hash` says which
    schedule it was computed for; a mismatch means "recompute".
    """

    schedule_hash: str
    next_due: str | None = None
    last_slot: str | None = None
    last_finished: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule_hash": self.schedule_hash,
            "next_due": self.next_due,
            "last_slot": self.last_slot,
            "last_finished": self.last_finished,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleState:
        return cls(
            schedule_hash=data["schedule_hash"],
            next_due=data.get("next_due"),
            last_slot=data.get("last_slot"),
            last_finished=data.get("last_finished"),
        )


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """What one `apply` writes: jobs to put (with their schedule state) and names to remove."""

    put: Mapping[str, AppliedJob]
    schedules: Mapping[str, ScheduleState]
    remove: tuple[str, ...] = ()
    config: Mapping[str, Any] | None = None  # GlobalConfig.to_dict(); None leaves it as it is


class Store(Protocol):
    """A state backend.

    - `exists()`: whether any state has been written (read-only commands treat "no" as empty).
    - `lock(timeout)`: exclusive state lock for a read-modify-write; raises `UserError` naming
      the holder when it cannot be had within `timeout` seconds.
    - `applied()`, `schedules()`: the current applied jobs and schedule states, by job name.
    - `config()`: the applied global config (`GlobalConfig.to_dict()`), `{}` before any apply.
    - `write_applied(change)`: write a change all-or-nothing; call while holding `lock()`.
      Schedule states are written first; a reader that sees a new spec whose `schedule_hash`
      differs from its schedule state recomputes the schedule, so a crash between the two
      writes is harmless.
    - `describe()`: where the state lives, for messages.
    """

    def exists(self) -> bool: ...

    def lock(self, timeout: float) -> AbstractContextManager[None]: ...

    def applied(self) -> dict[str, AppliedJob]: ...

    def schedules(self) -> dict[str, ScheduleState]: ...

    def config(self) -> dict[str, Any]: ...

    def write_applied(self, change: AppliedChange) -> None: ...

    def describe(self) -> str: ...


def open_store(location: str) -> Store:
    """The backend for `--state-dir`: a directory path (the file backend)."""
    from agentjobs.store.files import FileStore

    return FileStore(Path(location))
