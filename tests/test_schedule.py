"""Schedule math, including the DST policy documented in agentjobs/schedule.py."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agentjobs.schedule import check_cron, cron_fires, fire_time, jitter_offset, next_slot
from agentjobs.spec import Schedule

UTC = UTC


def _local(expr: str, tz: str, start: datetime, n: int) -> list[str]:
    zone = ZoneInfo(tz)
    return [
        d.astimezone(zone).strftime("%m-%d %H:%M %Z")
        for d in itertools.islice(cron_fires(expr, tz, start), n)
    ]


def test_spring_forward_fires_once_at_the_end_of_the_gap() -> None:
    assert _local("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC), 3) == [
        "03-29 03:00 CEST",
        "03-30 02:30 CEST",
        "03-31 02:30 CEST",
    ]
    assert _local("30 2 * * *", "America/New_York", datetime(2026, 3, 7, 12, tzinfo=UTC), 2) == [
        "03-08 03:00 EDT",
        "03-09 02:30 EDT",
    ]


def test_fall_back_fires_a_fixed_time_once_not_twice() -> None:
    assert _local("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=UTC), 3) == [
        "10-25 02:30 CEST",
        "10-26 02:30 CET",
        "10-27 02:30 CET",
    ]
    assert _local("30 1 * * *", "America/New_York", datetime(2026, 10, 31, 12, tzinfo=UTC), 2) == [
        "11-01 01:30 EDT",
        "11-02 01:30 EST",
    ]


def test_hourly_expressions_fire_in_both_occurrences_of_the_repeated_hour() -> None:
    assert _local("0 * * * *", "Europe/Berlin", datetime(2026, 10, 24, 23, tzinfo=UTC), 3) == [
        "10-25 02:00 CEST",
        "10-25 02:00 CET",
        "10-25 03:00 CET",
    ]


def test_times_that_map_to_one_instant_fire_once() -> None:
    assert _local("*/30 * * * *", "Europe/Berlin", datetime(2026, 3, 29, 0, tzinfo=UTC), 3) == [
        "03-29 01:30 CET",
        "03-29 03:00 CEST",
        "03-29 03:30 CEST",
    ]


def test_quarter_hourly_is_every_15_real_minutes_across_both_transitions() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    fires = list(itertools.islice(cron_fires("*/15 * * * *", "Europe/Berlin", start), 35039))
    assert {b - a for a, b in itertools.pairwise(fires)} == {timedelta(minutes=15)}
    assert fires[-1] == datetime(2026, 12, 31, 23, 45, tzinfo=UTC)


def test_macros_and_validation() -> None:
    start = datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert next(cron_fires("@daily", "UTC", start)) == datetime(2026, 11, 24, tzinfo=UTC)
    assert next(cron_fires("@hourly", "UTC", start)) == datetime(2026, 11, 23, 13, tzinfo=UTC)
    assert check_cron("@weekly") is None
    assert check_cron("0 2 * * MON-FRI") is None
    assert check_cron("0 0 29 2 *") is None


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # pinned croniter 7.0.0: steps starting past the range's end fire only at their start
        ("59/15 * * * *", datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 0, 59)),
        ("*/15 * * * *", datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 0, 15)),
        ("0 2 * * 0", datetime(2026, 11, 23), datetime(2026, 11, 29, 2, 0)),
        ("30 2 * * *", datetime(2026, 11, 23), datetime(2026, 11, 23, 2, 30)),
        ("0 6 * * 0", datetime(2026, 11, 23), datetime(2026, 11, 29, 6, 0)),
    ],
)
def test_expressions_used_in_examples_and_docs(
    expr: str, after: datetime, expected: datetime
) -> None:
    got = next(cron_fires(expr, "UTC", after.replace(tzinfo=UTC)))
    assert got == expected.replace(tzinfo=UTC)


def test_every_counts_from_the_end_of_the_previous_run() -> None:
    schedule = Schedule(every=8 * 3600)
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert next_slot(schedule, now) == now
    finished = datetime(2026, 11, 23, 11, 30, tzinfo=UTC)  # a 3-hour run that ended at 11:30
    assert next_slot(schedule, now, finished) == finished + timedelta(hours=8)


def test_at_has_exactly_one_slot() -> None:
    schedule = Schedule(at="2026-12-01T09:30:00+00:00")
    before = datetime(2026, 11, 23, tzinfo=UTC)
    assert next_slot(schedule, before) == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert next_slot(schedule, datetime(2026, 12, 1, 9, 30, tzinfo=UTC)) is None


def test_jitter_is_deterministic_bounded_and_spreads_jobs() -> None:
    offsets = [jitter_offset(f"job-{i}", 300) for i in range(200)]
    assert offsets == [jitter_offset(f"job-{i}", 300) for i in range(200)]
    assert all(0 <= o <= 300 for o in offsets)
    assert len(set(offsets)) > 100
    assert jitter_offset("x", 0) == 0
    slot = datetime(2026, 11, 24, 2, tzinfo=UTC)
    schedule = Schedule(cron="0 2 * * *", jitter=300)
    assert fire_time("job-1", schedule, slot) == slot + timedelta(seconds=offsets[1])


def test_catchup_all_is_capped_at_100_with_a_warning() -> None:
    from agentjobs.schedule import CATCHUP_CAP, plan_slots

    schedule = Schedule(cron="* * * * *", catchup="all")
    start = datetime(2026, 11, 16, tzinfo=UTC)
    plan = plan_slots("j", schedule, last_slot=start, next_due=None, now=start + timedelta(days=7))
    # the newest 100 missed ones, plus the 6 within the 5-minute grace (on time, not missed)
    assert len(plan.run) == CATCHUP_CAP + 6
    assert plan.skipped is not None and plan.skipped.reason == "catchup_cap"
    assert plan.skipped.count == 7 * 1440 - 6 - CATCHUP_CAP  # estimated, and exactly right
    assert plan.skipped.first == start + timedelta(minutes=1)
    assert plan.skipped.last == plan.run[0][0] - timedelta(minutes=1)
    assert plan.warning is not None and "catchup: all runs the newest 100" in plan.warning
    assert plan.last_slot == start + timedelta(days=7)


def test_plan_slots_is_a_pure_function_of_now() -> None:
    from agentjobs.schedule import plan_slots

    schedule = Schedule(cron="0 2 * * *", jitter=600)
    last = datetime(2026, 11, 23, 3, tzinfo=UTC)
    early = plan_slots(
        "j", schedule, last_slot=last, next_due=None, now=datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    )
    assert early.run == () and early.next_due == fire_time(
        "j", schedule, datetime(2026, 11, 24, 2, tzinfo=UTC)
    )
    due = plan_slots("j", schedule, last_slot=last, next_due=None, now=early.next_due)
    assert due.run == ((datetime(2026, 11, 24, 2, tzinfo=UTC), "schedule"),)
    assert due == plan_slots("j", schedule, last_slot=last, next_due=None, now=early.next_due)


@pytest.mark.parametrize(
    ("expr", "tz"),
    [
        ("* * * * *", "Europe/Berlin"),
        ("*/15 * * * *", "Europe/Berlin"),
        ("0 * * * *", "Europe/Berlin"),
        ("30 2 * * *", "Europe/Berlin"),
        ("30 1 * * *", "America/New_York"),
        ("0 6 * * 0", "Australia/Sydney"),
        ("0 0 29 2 *", "UTC"),
        ("15 3 1 * *", "Asia/Tokyo"),
    ],
)
def test_next_and_previous_fire_agree_with_cron_fires_across_dst(expr: str, tz: str) -> None:
    """The O(1) look-ups (issue 10, item 7) give the slots the DST policy gives."""
    from agentjobs.schedule import next_fire, prev_fire

    for start in (
        datetime(2026, 3, 29, 0, 7, 13, tzinfo=UTC),  # Europe: spring forward at 01:00 UTC
        datetime(2026, 10, 24, 21, 59, tzinfo=UTC),  # Europe: fall back, 25 October 01:00 UTC
        datetime(2026, 10, 25, 0, 29, tzinfo=UTC),
        datetime(2026, 11, 1, 3, 31, tzinfo=UTC),  # US: fall back, 1 November
        datetime(2026, 4, 4, 14, 0, tzinfo=UTC),  # Sydney: 5 April
        datetime(2026, 7, 1, 0, 0, tzinfo=UTC),
    ):
        fires = list(itertools.islice(cron_fires(expr, tz, start), 60 if "*" in expr[:2] else 6))
        got, cursor = [], start
        for _ in fires:
            cursor = next_fire(expr, tz, cursor)
            got.append(cursor)
        assert got == fires
        for a, b in list(itertools.pairwise(fires))[::7]:
            assert prev_fire(expr, tz, b - timedelta(seconds=1)) == a
            assert prev_fire(expr, tz, b) == b


def test_plan_slots_cost_does_not_grow_with_the_gap() -> None:
    """A 200-day gap of a minutely job: one run, one summary, NEXT after now, in milliseconds."""
    import time

    from agentjobs.schedule import plan_slots

    start = datetime(2026, 1, 1, tzinfo=UTC)
    for policy in ("once", "skip"):
        schedule = Schedule(cron="* * * * *", catchup=policy, timezone="Europe/Berlin")
        now = start + timedelta(days=200, seconds=30)
        began = time.perf_counter()
        plan = plan_slots("j", schedule, last_slot=start, next_due=None, now=now)
        assert time.perf_counter() - began < 0.2
        assert plan.run == ((start + timedelta(days=200), "schedule"),)
        assert plan.skipped is not None and not plan.skipped.exact
        assert plan.skipped.first == start + timedelta(minutes=1)
        assert plan.skipped.last == start + timedelta(days=200, minutes=-1)
        # about one per minute (the estimate is off by the hour the DST changes take)
        assert abs(plan.skipped.count - 200 * 1440) <= 61
        assert plan.next_due == start + timedelta(days=200, minutes=1)
        assert plan.last_slot == start + timedelta(days=200)


def test_a_marker_after_now_means_the_clock_went_back() -> None:
    """Slots after `now` are not done in the corrected timeline: NEXT is the next one from now."""
    from agentjobs.schedule import plan_slots

    now = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC)
    schedule = Schedule(cron="*/10 * * * *")
    ahead = now + timedelta(days=2)
    plan = plan_slots("j", schedule, last_slot=ahead, next_due=ahead, now=now)
    assert plan.run == () and plan.skipped is None
    assert plan.next_due == datetime(2026, 11, 23, 12, 10, tzinfo=UTC)
    assert plan.last_slot == now
