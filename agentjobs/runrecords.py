"""Run records as typed values, with one codec: `encode` writes the JSON object of a record (one
line of records/YYYY-MM-DD.jsonl, `schema/run-record.schema.json`), `decode` reads one back.

Each event has its own frozen dataclass with exactly the fields it writes; a field whose value
is its "absent" default (`OMITTED_WHEN`) is left out of the line, as it always was. Outcome and
next step are enums (`retry.Outcome`, `retry.Next`): they compare equal to their strings and
are written as them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from agentjobs.retry import Next, Outcome

# fields left out of a record's line while they hold this value
OMITTED_WHEN: dict[str, Any] = {
    "replay_of": None,
    "secrets_redacted": False,
    "agent": None,
    "hold": None,
    "count_exact": True,
    "count": None,
    "first": None,
    "last": None,
    "cost_usd": None,
    "hold_until": None,
    "cost_estimated": False,
    "by": None,
    "cancelled_at": None,
    "land": None,
    "note": None,
    "guidance": None,
    "landed": None,
    "into": None,
    "retry_run": None,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """What every record says: which run, attempt and job, when, written by whom."""

    event: ClassVar[str] = ""
    time: str
    run_id: str
    job: str
    attempt: int
    trigger: str
    slot: str | None
    queued_at: str
    lock_key: str
    priority: str
    host: str
    pid: int
    spec_hash: str | None
    git_commit: str | None
    corrective: bool
    replay_of: str | None = None
    secrets_redacted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStarted(RunRecord):
    event: ClassVar[str] = "attempt_started"
    started_at: str
    child_pid: int
    supervisor: dict[str, Any]  # (pid, start, boot_id): runner.process_identity
    log_path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFinished(RunRecord):
    event: ClassVar[str] = "attempt_finished"
    started_at: str
    finished_at: str
    duration_s: float
    outcome: Outcome
    exit_code: int | None
    signal: str | None
    error: str | None
    output_tail: str
    log_path: str
    next: Next
    next_attempt_at: str | None
    reason: str
    agent: dict[str, Any] | None = None
    hold: str | None = None  # the usage-limit key this attempt's retry holds
    hold_until: str | None = None  # until when, if not until the retry (a fallback runs it)
    cost_usd: float | None = None  # the agent's own figure, or estimated (`pricing.py`)
    cost_estimated: bool = False
    by: str | None = None  # outcome cancelled: who cancelled the attempt
    cancelled_at: str | None = None  # and when they asked (UTC)
    land: dict[str, Any] | None = None  # what became of the run's branch (`land`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        object.__setattr__(self, "next", Next(self.next))


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotSkipped(RunRecord):
    event: ClassVar[str] = "slot_skipped"
    reason: str
    outcome: Outcome = Outcome.SKIPPED
    count: int | None = None  # how many slots (a summary), or None for a deleted job's run
    first: str | None = None
    last: str | None = None
    count_exact: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLettered(RunRecord):
    event: ClassVar[str] = "dead_lettered"
    dlq_id: str
    reason: str
    outcome: Outcome

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))


@dataclass(frozen=True, slots=True, kw_only=True)
class Replayed(RunRecord):
    event: ClassVar[str] = "replayed"
    dlq_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved(RunRecord):
    event: ClassVar[str] = "resolved"
    dlq_id: str
    note: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancelled(RunRecord):
    """A run that a person cancelled while it waited in the queue (its `attempt` never ran):
    removed, never retried, never dead-lettered. A running attempt that is cancelled ends
    with its `attempt_finished` instead (outcome `cancelled`, `by`, `cancelled_at`)."""

    event: ClassVar[str] = "cancelled"
    by: str  # the user who cancelled it
    reason: str
    outcome: Outcome = Outcome.CANCELLED

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))


@dataclass(frozen=True, slots=True, kw_only=True)
class Reviewed(RunRecord):
    """A person's decision on a run in the review inbox (review.py): approve (it landed:
    `landed` is `into`'s new head), reject, or retry (`retry_run`, with `guidance`)."""

    event: ClassVar[str] = "reviewed"
    decision: str  # approve | reject | retry
    by: str
    note: str | None = None
    guidance: str | None = None
    landed: str | None = None
    into: str | None = None
    retry_run: str | None = None


BY_EVENT: dict[str, type[RunRecord]] = {
    cls.event: cls
    for cls in (
        AttemptStarted,
        AttemptFinished,
        SlotSkipped,
        DeadLettered,
        Replayed,
        Resolved,
        Cancelled,
        Reviewed,
    )
}


def make(event: str, **fields: Any) -> RunRecord:
    """The record of `event` from its fields: a field it does not have is an error."""
    return BY_EVENT[event](**fields)


def encode(record: RunRecord) -> dict[str, Any]:
    """The JSON object of `record` (its line in the day's file)."""
    data: dict[str, Any] = {"event": record.event}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in OMITTED_WHEN and value == OMITTED_WHEN[f.name]:
            continue
        data[f.name] = str(value) if isinstance(value, (Outcome, Next)) else value
    return data


def decode(data: Mapping[str, Any]) -> RunRecord:
    """A record from its JSON object; ValueError when it is not one."""
    cls = BY_EVENT.get(str(data.get("event")))
    if cls is None:
        raise ValueError(f"unknown record event {data.get('event')!r}")
    try:
        return cls(**{k: v for k, v in data.items() if k != "event"})
    except TypeError as exc:
        raise ValueError(f"not a {cls.event} record: {exc}") from None
