"""Schedule math: pure functions of a clock. No state, no I/O.

DST policy for cron schedules (tested in tests/test_schedule.py):
- Cron expressions are read in the job's IANA time zone, on local wall-clock time.
- A wall-clock time that does not exist (the spring-forward gap) fires once, at the first valid
  instant after the gap (02:30 Europe/Berlin on the last Sunday of March fires at 03:00 CEST), the
  way cronie runs jobs from the skipped hour right after the change.
- A wall-clock time that happens twice (fall-back) fires once, at its first occurrence, when
  the hour field is fixed (`30 2 * * *`). When the hour field is `*` or a `*/N` step the
  expression means "every hour", so both occurrences fire (`0 * * * *` fires at 02:00 CEST and
  at 02:00 CET).
- Several wall-clock times that map to one instant fire once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentjobs.spec import Schedule, parse_at

UTC = UTC
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MINUTE = timedelta(minutes=1)


def expand_macro(expr: str) -> str:
    return _MACROS.get(expr.strip().lower(), expr.strip())


@cache
def check_cron(expr: str) -> str | None:
    """None when `expr` is a valid 5-field expression or macro, else a message saying why."""
    from croniter import croniter

    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            known = ", ".join(sorted(_MACROS))
            return f"unknown cron macro `{text}`; use one of {known}"
        return None
    fields = text.split()
    if len(fields) != 5:
        return (
            f"cron expression `{text}` has {len(fields)} fields; write 5: "
            "minute hour day-of-month month day-of-week"
        )
    try:
        it = croniter(text, datetime(2026, 1, 1))
    except Exception as exc:  # croniter raises several unrelated types for bad expressions
        return f"cron expression `{text}` is invalid: {exc}"
    try:
        it.get_next(datetime)
    except Exception:  # CroniterBadDateError: no date in the next years matches
        return f"cron expression `{text}` never fires (no such date); check day and month"
    return None


def check_timezone(name: str) -> str | None:
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone `{name}`; use an IANA name such as UTC or Europe/Berlin"
    return None


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _exists(naive: datetime, tz: ZoneInfo) -> bool:
    return naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def _instants(naive: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants a local wall-clock time `naive` stands for, under the DST policy."""
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if _exists(naive, tz):  # repeated (fall-back) time: fold=0 is the first occurrence
        return [first, second] if both_folds else [first]
    probe = naive - _MINUTE  # in the gap: fire when it ends
    while not _exists(probe, tz):
        probe -= _MINUTE
    return [probe.replace(tzinfo=tz).astimezone(UTC) + _MINUTE]


def cron_fires(expr: str, tz_name: str, after: datetime) -> Iterator[datetime]:
    """UTC instants strictly after `after` at which `expr` fires in `tz_name`, in order."""
    from croniter import croniter

    text = expand_macro(expr)
    tz = zone(tz_name)
    hour = text.split()[1]
    both_folds = hour == "*" or hour.startswith("*/")
    # Start three hours early on the wall clock: a repeated hour's second occurrence has an
    # earlier wall-clock reading than instants before it.
    start = (after - timedelta(hours=3)).astimezone(tz).replace(tzinfo=None)
    it = croniter(text, start)
    pending: list[datetime] = []
    last = after
    while True:
        naive = it.get_next(datetime)
        pending.extend(i for i in _instants(naive, tz, both_folds) if i > last)
        pending.sort()
        # Anything at least 3h of wall clock behind the newest candidate can no longer be undercut.
        horizon = naive.replace(tzinfo=tz, fold=0).astimezone(UTC) - timedelta(hours=3)
        while pending and pending[0] <= horizon:
            moment = pending.pop(0)
            if moment > last:
                last = moment
                yield moment


@lru_cache(maxsize=1024)
def _next_cron(expr: str, tz: str, after: datetime) -> datetime:
    """The first fire after `after` (cached: an apply asks it of many jobs for one `now`)."""
    return next(cron_fires(expr, tz, after))


def jitter_offset(job: str, jitter: float) -> float:
    """A per-job delay in [0, jitter], the same on every tick and every machine."""
    if jitter <= 0:
        return 0.0
    digest = int.from_bytes(hashlib.sha256(job.encode()).digest()[:8], "big")
    return float(digest % (int(jitter) + 1))


def next_slot(
    schedule: Schedule, after: datetime, last_finished: datetime | None = None
) -> datetime | None:
    """The next scheduled slot (before jitter) strictly after `after`, or None if there is none.

    `every` counts from the end of the previous run; never run, it is due at `after` itself.
    `at` has one slot; once `after` is past it there is none.
    """
    if schedule.cron is not None:
        return _next_cron(schedule.cron, schedule.timezone, after)
    if schedule.every is not None:
        if last_finished is None:
            return after
        return last_finished + timedelta(seconds=schedule.every)
    if schedule.at is not None:
        moment = parse_at(schedule.at, "UTC")
        return moment if moment > after else None
    return None


def fire_time(job: str, schedule: Schedule, slot: datetime) -> datetime:
    """When a slot actually starts: the slot plus the job's deterministic jitter."""
    return slot + timedelta(seconds=jitter_offset(job, schedule.jitter))


# -- which slots are due at a tick, under the catch-up policy -----------------------------------

CATCHUP_GRACE = 300.0  # a slot started within 5 minutes of its time is on time, not "missed"
CATCHUP_CAP = 100  # catchup: all runs at most this many missed slots
_ENUMERATION_LIMIT = 200_000


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """What a tick does with a job's slots: enqueue some, record some as skipped."""

    run: tuple[tuple[datetime, str], ...] = ()  # (slot, trigger: schedule | catchup)
    skip: tuple[tuple[datetime, str], ...] = ()  # (slot, reason: missed | coalesced | catchup_cap)
    last_slot: datetime | None = None  # the marker once these are enqueued or recorded
    next_due: datetime | None = None  # fire time of the next slot; None: none, or after a run
    warning: str | None = None


def _late(job: str, schedule: Schedule, slot: datetime, now: datetime) -> bool:
    return (now - fire_time(job, schedule, slot)).total_seconds() > CATCHUP_GRACE


def _apply_catchup(
    job: str, schedule: Schedule, slots: list[datetime], now: datetime
) -> tuple[list[tuple[datetime, str]], list[tuple[datetime, str]], str | None]:
    late = [s for s in slots if _late(job, schedule, s, now)]
    on_time = [(s, "schedule") for s in slots if not _late(job, schedule, s, now)]
    if not late:
        return on_time, [], None
    if schedule.catchup == "skip":
        return on_time, [(s, "missed") for s in late], None
    if schedule.catchup == "once":
        if on_time:  # the newest slot runs on time; the missed ones are covered by it
            return on_time, [(s, "coalesced") for s in late], None
        return [(late[-1], "catchup")], [(s, "coalesced") for s in late[:-1]], None
    kept = late[-CATCHUP_CAP:]
    dropped = late[:-CATCHUP_CAP]
    warning = None
    if dropped:
        warning = (
            f"{len(late)} missed slots; catchup: all runs the newest {CATCHUP_CAP} and skips "
            f"{len(dropped)} (reason catchup_cap)"
        )
    return [(s, "catchup") for s in kept] + on_time, [(s, "catchup_cap") for s in dropped], warning


def plan_slots(
    job: str,
    schedule: Schedule,
    *,
    last_slot: datetime | None,
    next_due: datetime | None,
    now: datetime,
) -> SlotPlan:
    """The slots of `job` due at `now` after the marker `last_slot`. Pure."""
    if schedule.cron is not None:
        after = last_slot or now
        slots: list[datetime] = []
        upcoming = None
        for slot in cron_fires(schedule.cron, schedule.timezone, after):
            if fire_time(job, schedule, slot) > now or len(slots) >= _ENUMERATION_LIMIT:
                upcoming = slot
                break
            slots.append(slot)
        if not slots:
            due = fire_time(job, schedule, upcoming) if upcoming else None
            return SlotPlan(last_slot=last_slot, next_due=due)
        run, skip, warning = _apply_catchup(job, schedule, slots, now)
        due = fire_time(job, schedule, upcoming) if upcoming else None
        return SlotPlan(tuple(run), tuple(skip), slots[-1], due, warning)
    if schedule.every is not None:
        if next_due is None or next_due > now:
            return SlotPlan(last_slot=last_slot, next_due=next_due)
        slot = next_due - timedelta(seconds=jitter_offset(job, schedule.jitter))
        return SlotPlan(run=((slot, "schedule"),), last_slot=slot, next_due=None)
    if schedule.at is not None:
        slot = parse_at(schedule.at, "UTC")
        if last_slot is not None and slot <= last_slot:
            return SlotPlan(last_slot=last_slot, next_due=None)
        if fire_time(job, schedule, slot) > now:
            return SlotPlan(last_slot=last_slot, next_due=fire_time(job, schedule, slot))
        run, skip, warning = _apply_catchup(job, schedule, [slot], now)
        return SlotPlan(tuple(run), tuple(skip), slot, None, warning)
    return SlotPlan(last_slot=last_slot)
