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


# Within a week and away from any UTC-offset change, local wall-clock time maps one to one onto
# UTC, so croniter's own next/previous answer is exact; elsewhere `cron_fires` applies the DST
# policy. This keeps a next or previous slot O(1) even for `* * * * *` (issue 10, item 7).
_QUIET_SPAN = timedelta(days=7)
_DST_MARGIN = timedelta(hours=3)


def _quiet(tz: ZoneInfo, lo: datetime, hi: datetime) -> bool:
    """No UTC-offset change within 3 hours of [lo, hi] (a span of at most a week)."""
    if hi - lo > _QUIET_SPAN:
        return False
    before = (lo - _DST_MARGIN).astimezone(tz).utcoffset()
    return before == (hi + _DST_MARGIN).astimezone(tz).utcoffset()


def next_fire(expr: str, tz_name: str, after: datetime) -> datetime:
    """The first UTC instant strictly after `after` at which `expr` fires (as `cron_fires`)."""
    from croniter import croniter

    tz = zone(tz_name)
    local = after.astimezone(tz).replace(tzinfo=None)
    naive: datetime = croniter(expand_macro(expr), local).get_next(datetime)
    moment = naive.replace(tzinfo=tz).astimezone(UTC)
    if moment > after and _quiet(tz, after, moment):
        return moment
    return next(cron_fires(expr, tz_name, after))


def prev_fire(expr: str, tz_name: str, at: datetime) -> datetime | None:
    """The newest UTC instant at or before `at` at which `expr` fires (as `cron_fires`), found
    from `at` backwards: no enumeration of the slots since some older time."""
    from croniter import croniter

    tz = zone(tz_name)
    local = at.astimezone(tz).replace(tzinfo=None, microsecond=0) + timedelta(seconds=1)
    naive: datetime = croniter(expand_macro(expr), local).get_prev(datetime)
    moment = naive.replace(tzinfo=tz).astimezone(UTC)
    if moment <= at and _quiet(tz, moment, at):
        return moment
    span = max(at - moment, timedelta(0)) + timedelta(hours=4)  # near a DST change
    for _ in range(6):
        newest = None
        for fire in cron_fires(expr, tz_name, at - span):
            if fire > at:
                break
            newest = fire
        if newest is not None:
            return newest
        span *= 4
    return None


def count_fires(
    expr: str, tz_name: str, after: datetime, upto: datetime, limit: int = 48
) -> tuple[int, bool]:
    """How many times `expr` fires in (`after`, `upto`], and whether that is exact: the first
    `limit` are counted, the rest estimated from their average spacing (a 30-day gap of a
    minutely job is not enumerated)."""
    count = 0
    cursor = after
    first = None
    near_dst = not _quiet(zone(tz_name), after, after + timedelta(days=1))
    fires = cron_fires(expr, tz_name, after) if near_dst else None  # one iterator, not `limit`
    while count < limit:
        fire = next(fires) if fires is not None else next_fire(expr, tz_name, cursor)
        if fire > upto:
            return count, True
        count += 1
        first = first or fire
        cursor = fire
    assert first is not None
    spacing = (cursor - first) / max(1, count - 1)
    if spacing <= timedelta(0):
        return count, False
    return count + int((upto - cursor) / spacing), False


@lru_cache(maxsize=1024)
def _next_cron(expr: str, tz: str, after: datetime) -> datetime:
    """The first fire after `after` (cached: an apply asks it of many jobs for one `now`)."""
    return next_fire(expr, tz, after)


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


_DAY = 86400.0


def max_gap(job: str, schedule: Schedule) -> float | None:
    """Seconds a plausible next-due time can lie ahead of now: an `every` interval plus the
    job's jitter; for cron, the longest interval between two slots (exact for expressions that
    restrict only minutes and hours, two hours more when the hour is fixed, for DST), else a
    bound read off the coarsest restricted field (weekdays: a week; days of the month: two
    months; months: eight years, for 29 February), plus jitter. None for `at`, whose one slot
    is where it is. Computed at apply; the no-op tick only compares against it."""
    jitter = jitter_offset(job, schedule.jitter)
    if schedule.every is not None:
        return schedule.every + jitter
    if schedule.cron is None:
        return None
    from croniter import croniter

    fields = croniter(expand_macro(schedule.cron)).expanded
    minutes, hours, dom, month, dow = (list(f) for f in fields[:5])
    if month != ["*"]:
        return 8 * 366 * _DAY + jitter
    if dom != ["*"]:
        return 62 * _DAY + jitter
    if dow != ["*"]:
        return 7 * _DAY + 2 * 3600 + jitter
    every_hour = hours == ["*"]
    hours = list(range(24)) if every_hour else hours
    minutes = list(range(60)) if minutes == ["*"] else minutes
    times = sorted({int(h) * 60 + int(m) for h in hours for m in minutes})
    gaps = [b - a for a, b in zip(times, [*times[1:], times[0] + 1440], strict=True)]
    return max(gaps) * 60.0 + (0.0 if every_hour else 2 * 3600) + jitter


def fire_time(job: str, schedule: Schedule, slot: datetime) -> datetime:
    """When a slot actually starts: the slot plus the job's deterministic jitter."""
    return slot + timedelta(seconds=jitter_offset(job, schedule.jitter))


# -- which slots are due at a tick, under the catch-up policy -----------------------------------

CATCHUP_GRACE = 300.0  # a slot started within 5 minutes of its time is on time, not "missed"
CATCHUP_CAP = 100  # catchup: all runs at most this many missed slots


@dataclass(frozen=True, slots=True)
class Skipped:
    """The slots of one job a tick skips, summarised (one `slot_skipped` record, not one per
    slot): `count` of them from `first` to `last`, all for `reason` (missed | coalesced |
    catchup_cap). `exact` is False when the count of a long gap is estimated."""

    reason: str
    count: int
    first: datetime
    last: datetime
    exact: bool = True


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """What a tick does with a job's slots: enqueue some, record the others as skipped."""

    run: tuple[tuple[datetime, str], ...] = ()  # (slot, trigger: schedule | catchup)
    skipped: Skipped | None = None
    last_slot: datetime | None = None  # the marker once these are enqueued or recorded
    next_due: datetime | None = None  # fire time of the next slot; None: none, or after a run
    warning: str | None = None


def on_time(job: str, schedule: Schedule, slot: datetime, now: datetime) -> bool:
    """A slot is on time while its fire time is at most CATCHUP_GRACE (5 minutes) behind `now`;
    later it is missed (catchup: skip does not run it)."""
    return (now - fire_time(job, schedule, slot)).total_seconds() <= CATCHUP_GRACE


def _skipped(
    schedule: Schedule, reason: str, after: datetime, upto: datetime | None
) -> Skipped | None:
    """The summary of the cron slots in (`after`, `upto`]: two look-ups and a bounded count."""
    assert schedule.cron is not None
    if upto is None or upto <= after:
        return None
    first = next_fire(schedule.cron, schedule.timezone, after)
    if first > upto:
        return None
    count, exact = count_fires(schedule.cron, schedule.timezone, after, upto)
    return Skipped(reason, count, first, upto, exact)


def _before(schedule: Schedule, slot: datetime) -> datetime | None:
    """The cron slot before `slot` (slots are whole minutes)."""
    assert schedule.cron is not None
    return prev_fire(schedule.cron, schedule.timezone, slot - timedelta(seconds=1))


def _plan_cron(job: str, schedule: Schedule, last_slot: datetime | None, now: datetime) -> SlotPlan:
    assert schedule.cron is not None
    expr, tz = schedule.cron, schedule.timezone
    jitter = timedelta(seconds=jitter_offset(job, schedule.jitter))
    # Slots up to the marker are done. A marker after `now` means the clock went back: slots
    # after `now` are not done in this timeline, so the marker comes back to `now`.
    after = now if last_slot is None or last_slot > now else last_slot
    marker = last_slot if last_slot is None or last_slot <= now else after
    newest = prev_fire(expr, tz, now - jitter)  # the newest slot whose fire time has come
    if newest is None or newest <= after:
        upcoming = next_fire(expr, tz, after)
        return SlotPlan(last_slot=marker, next_due=fire_time(job, schedule, upcoming))
    due = fire_time(job, schedule, next_fire(expr, tz, newest))  # after `now`, whatever the gap
    if schedule.catchup == "all":
        return _plan_all(job, schedule, after, newest, now, due)
    punctual = on_time(job, schedule, newest, now)
    if schedule.catchup == "skip" and not punctual:
        skipped = _skipped(schedule, "missed", after, newest)
        return SlotPlan((), skipped, newest, due)
    reason = "coalesced" if schedule.catchup == "once" else "missed"
    skipped = _skipped(schedule, reason, after, _before(schedule, newest))
    trigger = "schedule" if punctual else "catchup"
    return SlotPlan(((newest, trigger),), skipped, newest, due)


def _plan_all(
    job: str, schedule: Schedule, after: datetime, newest: datetime, now: datetime, due: datetime
) -> SlotPlan:
    """catchup: all: every due slot runs, the on-time ones and the newest CATCHUP_CAP missed
    ones; older ones are skipped (catchup_cap). Walks back from the newest: O(cap)."""
    runs: list[tuple[datetime, str]] = []
    late = 0
    slot: datetime | None = newest
    while slot is not None and slot > after and late < CATCHUP_CAP:
        punctual = on_time(job, schedule, slot, now)
        late += 0 if punctual else 1
        runs.append((slot, "schedule" if punctual else "catchup"))
        slot = _before(schedule, slot)
    runs.reverse()
    skipped = _skipped(schedule, "catchup_cap", after, _before(schedule, runs[0][0]))
    warning = None
    if skipped is not None:
        count = f"{skipped.count}" if skipped.exact else f"about {skipped.count}"
        warning = (
            f"{count} more missed slots; catchup: all runs the newest {CATCHUP_CAP} and skips "
            f"the older ones from {skipped.first.isoformat()} (reason catchup_cap)"
        )
    return SlotPlan(tuple(runs), skipped, newest, due, warning)


def plan_slots(
    job: str,
    schedule: Schedule,
    *,
    last_slot: datetime | None,
    next_due: datetime | None,
    now: datetime,
) -> SlotPlan:
    """The slots of `job` due at `now` after the marker `last_slot`. Pure.

    At most one slot runs under `catchup: once` (the newest due one; the older ones are
    coalesced into it) and `skip` (the newest, and only when it is on time, see `on_time`;
    the others are missed); `all` runs each (capped at CATCHUP_CAP). The cost does not grow
    with the gap: the newest slot is found backwards from `now`, the skipped ones are counted
    up to a bound and estimated beyond it, and `next_due` is always after `now`.
    """
    if schedule.cron is not None:
        return _plan_cron(job, schedule, last_slot, now)
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
        if on_time(job, schedule, slot, now):
            return SlotPlan(run=((slot, "schedule"),), last_slot=slot)
        if schedule.catchup == "skip":
            return SlotPlan(skipped=Skipped("missed", 1, slot, slot), last_slot=slot)
        return SlotPlan(run=((slot, "catchup"),), last_slot=slot)
    return SlotPlan(last_slot=last_slot)
