"""Catch-up after downtime (issue 10, items 6 and 7): at most one run per job per tick under
`catchup: once` and `skip`, each missed slot (capped) under `all`; skipped slots summarised in one
`slot_skipped` record per job per tick; cost independent of the length of the gap; NEXT in the
future after any gap. Time is driven with `--now` (an injected `Clock(start=...)`). Every test
runs on the file backend and on PostgreSQL (the `state` fixture)."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import BACKENDS, REPO, State, write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"
T0 = "2026-11-23T12:00:00+00:00"


def job(**fields: Any) -> str:
    doc: dict[str, Any] = {"command": [sys.executable, FAKE, "print", "x"]}
    doc.update(fields)
    return json.dumps(doc)


def records(state: State, event: str | None = None) -> list[dict[str, Any]]:
    out = state.records()
    schema = json.loads((REPO / "schema" / "run-record.schema.json").read_text())
    for record in out:
        jsonschema.validate(record, schema)
    return [r for r in out if event is None or r["event"] == event]


def at(offset: timedelta) -> str:
    return (datetime.fromisoformat(T0) + offset).isoformat()


def next_due(state: State, name: str) -> str:
    return str(state.runtime().jobs[name].next_due)


@pytest.mark.parametrize(
    ("policy", "runs", "skipped"),
    [
        ("once", [("12:05", "schedule")], ("coalesced", 4, "12:01", "12:04")),
        ("skip", [("12:05", "schedule")], ("missed", 4, "12:01", "12:04")),
        ("all", [(f"12:0{m}", "schedule") for m in range(1, 6)], None),
    ],
)
def test_five_missed_minutes_run_once_per_job_and_skips_are_one_record(
    ajs,
    jobs_dir: Path,
    state: State,
    policy: str,
    runs: list[tuple[str, str]],
    skipped: tuple[str, int, str, str] | None,
) -> None:
    write(jobs_dir / "m.yaml", job(schedule={"cron": "* * * * *", "catchup": policy}))
    assert ajs("apply", "--now", T0).code == 0
    now = at(timedelta(minutes=5, seconds=30))
    assert ajs("tick", "--now", now).code == 0
    done = [(r["slot"][11:16], r["trigger"]) for r in records(state, "attempt_finished")]
    assert done == runs
    skips = records(state, "slot_skipped")
    if skipped is None:
        assert skips == []
    else:
        assert len(skips) == 1
        got = skips[0]
        assert (got["reason"], got["count"], got["first"][11:16], got["last"][11:16]) == skipped
    assert next_due(state, "m") > now
    assert ajs("tick", "--now", at(timedelta(minutes=5, seconds=40))).out == ""


# `all` on files only: it runs 105 real job processes (~16 s); the cap is the engine's, the same
# on both backends, and `all` on PostgreSQL is the five-minute test's
@pytest.mark.parametrize(
    ("policy", "backend"),
    [(policy, backend) for policy in ("once", "skip") for backend in BACKENDS] + [("all", "files")],
)
def test_a_200_day_gap_runs_exactly_one_slot_quickly_and_next_is_in_the_future(
    ajs, jobs_dir: Path, state: State, policy: str
) -> None:
    write(jobs_dir / "m.yaml", job(schedule={"cron": "* * * * *", "catchup": policy}))
    write(jobs_dir / "e.yaml", job(schedule={"every": "1h"}))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).code == 0  # e runs at once
    now = at(timedelta(days=200, seconds=20))
    started = time.monotonic()
    assert ajs("tick", "--now", now).code == 0
    if policy != "all":  # `all` starts 100 real job processes
        assert time.monotonic() - started < 2
    done = [r for r in records(state, "attempt_finished") if r["time"] > T0]
    # all: the newest CATCHUP_CAP (100) missed slots and the 5 on time (within 5 minutes)
    expected = 105 if policy == "all" else 1
    assert len([r for r in done if r["job"] == "m"]) == expected
    newest = max(r["slot"] for r in done if r["job"] == "m")
    assert newest == at(timedelta(days=200))
    assert len([r for r in done if r["job"] == "e"]) == 1
    skips = records(state, "slot_skipped")
    assert len(skips) == 1 and skips[0]["job"] == "m"
    assert skips[0]["count"] == pytest.approx(200 * 1440 - expected, abs=2)
    assert skips[0]["first"] == at(timedelta(minutes=1))
    for name in ("m", "e"):
        assert next_due(state, name) > now
    later = at(timedelta(days=200, seconds=40))
    assert ajs("tick", "--now", later).out == ""


def test_skip_runs_nothing_when_the_newest_slot_is_late(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "h.yaml", job(schedule={"cron": "0 * * * *", "catchup": "skip"}))
    assert ajs("apply", "--now", T0).code == 0
    now = at(timedelta(days=3, minutes=6))  # the newest slot is 6 minutes late: not on time
    assert ajs("tick", "--now", now).code == 0
    assert records(state, "attempt_finished") == []
    [skip] = records(state, "slot_skipped")
    assert (skip["reason"], skip["count"]) == ("missed", 72)
    assert (skip["first"], skip["last"]) == (at(timedelta(hours=1)), at(timedelta(days=3)))
    assert next_due(state, "h") == at(timedelta(days=3, hours=1))


def test_history_shows_what_a_skip_record_stands_for(ajs, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "m.yaml", job(schedule={"cron": "* * * * *"}))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", at(timedelta(days=30, seconds=10))).code == 0
    shown = ajs("history").out
    assert "coalesced: about 43199 slots, 2026-11-23T12:01:00+00:00 to " in shown
