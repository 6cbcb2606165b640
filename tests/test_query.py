"""The query layer (query.py) and the verbs that render it: why each item waits, describe, holds,
`-o json` before and after a verb. Both backends (the `state` fixture)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentjobs import query
from agentjobs.clock import parse
from tests.conftest import State, wait_for, write
from tests.test_engine import _spawn, job

T0 = "2026-11-23T12:00:00Z"


def test_each_queued_item_says_why_it_waits(ajs: Any, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "agentjobs.yaml", "max_concurrent: 2\n")
    write(jobs_dir / "long.yaml", job("sleep", "6", lock="repo"))
    write(jobs_dir / "same.yaml", job("print", "x", lock="repo"))  # behind long's key
    write(jobs_dir / "held.yaml", job("print", "x", lock="p"))
    write(jobs_dir / "flaky.yaml", job("exit", "3", lock="f", retry={"attempts": 3}))
    assert ajs("apply").code == 0
    assert ajs("run", "flaky").code != 0  # its retry waits for the backoff
    assert ajs("pause", "held").code == 0
    holder = _spawn(state.location, "run", "long")
    try:
        wait_for(lambda: state.queue("running"))
        assert ajs("run", "same").code == 0  # left queued: the key is busy
        with state.store() as store:
            waits = {w.job: w for w in query.waits(store, datetime.now(UTC))}
        running = waits["long"]
        assert (running.kind, running.state) == ("running", "running")
        assert waits["same"].kind == "key"
        assert waits["same"].reason.startswith(
            f"lock key repo is held by run {running.run_id} of job long since "
        )
        assert waits["flaky"].kind == "retry"
        assert waits["flaky"].reason.startswith("retry not before ")
        described = ajs("describe", "same")
        assert described.code == 0
        assert f"held by run {running.run_id} of job long" in described.out
        status = json.loads(ajs("status", "-o", "json").out)
        same = next(r for r in status if r["job"] == "same")
        assert same["queued"] == 1
        assert same["waiting"].startswith("lock key repo is held by run")
        text = ajs("status").out
        long_line = next(line for line in text.splitlines() if line.startswith("long "))
        assert "running attempt 1 for " in long_line
        same_line = next(line for line in text.splitlines() if line.startswith("same "))
        assert "queued 1: lock key repo is held by run" in same_line
        assert "\x1b[" not in text  # no colours into a pipe
    finally:
        holder.communicate(timeout=30)


def test_describe_shows_unapplied_edits_fire_times_runs_and_dead_letters(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "nightly.yaml", job("exit", "2", schedule={"cron": "0 2 * * *"}))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("run", "nightly").code != 0  # one attempt: dead-lettered
    write(jobs_dir / "nightly.yaml", job("exit", "2", schedule={"cron": "0 3 * * *"}))
    result = ajs("describe", "nightly", "--now", T0)
    assert result.code == 0, result.err
    out = result.out
    assert 'schedule.cron: "0 2 * * *" -> "0 3 * * *"' in out
    assert out.count("2026-11-2") >= 5  # five fire times
    assert "Recent runs:" in out and "failed" in out
    assert "Dead letters:" in out and "exit code 2" in out
    data = json.loads(ajs("describe", "nightly", "-o", "json", "--now", T0).out)
    assert data["fire_times"][:2] == ["2026-11-24T02:00:00+00:00", "2026-11-25T02:00:00+00:00"]
    assert data["runs"][0]["outcome"] == "failed"
    assert len(data["dead_letters"]) == 1
    line = ajs("status", "--now", T0).out.splitlines()[1]
    assert "failed, 1 dead-lettered" in line
    missing = ajs("describe", "nope")
    assert (missing.code, missing.err.strip()) == (
        2,
        "agentjobs: error: no applied job named 'nope' (jobs: nightly)",
    )


def test_holds_list_and_release_is_recorded(
    ajs: Any, jobs_dir: Path, state: State, monkeypatch: Any
) -> None:
    write(jobs_dir / "a.yaml", json.dumps({"agent": {"kind": "claude", "prompt": "x"}}))
    assert ajs("apply").code == 0
    until = "2099-01-01T00:00:00+00:00"
    with state.store() as store, store.transaction(10) as runtime:
        runtime.holds["claude"] = until
    listed = ajs("holds")
    assert listed.out.splitlines()[0].split() == ["KIND", "KEY", "UNTIL", "JOBS"]
    assert listed.out.splitlines()[1].split()[:2] == ["usage", "claude"]
    assert listed.out.splitlines()[1].split()[-1] == "a"
    monkeypatch.setenv("USER", "alice")
    released = ajs("holds", "release", "claude")
    assert released.code == 0
    assert released.out.startswith("claude: usage-limit hold released (it held until ")
    assert state.runtime().holds == {}
    after = json.loads(ajs("holds", "-o", "json").out)
    assert after["holds"] == []
    assert after["released"][0]["by"] == "alice"
    assert after["released"][0]["until"] == until
    again = ajs("holds", "release", "claude")
    assert again.code == 2
    assert "no usage-limit hold on 'claude'; no hold is in force" in again.err


def test_honest_pause_and_resume(ajs: Any, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "off.yaml", job("print", "x", enabled=False, schedule={"every": "1h"}))
    assert ajs("apply").code == 0
    assert ajs("resume", "off").out.strip() == (
        "off: not paused; it stays off: its file says `enabled: false` (set it to true and "
        "`agentjobs apply`)"
    )
    assert ajs("pause", "off").out.strip() == "off: paused"
    assert ajs("pause", "off").out.strip() == "off: already paused"


def test_output_json_is_accepted_before_and_after_every_verb(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "a.yaml", job("print", "hello"))
    assert ajs("apply").code == 0
    assert ajs("run", "a").code == 0
    run_id = state.records("attempt_finished")[0]["run_id"]
    verbs = [
        ["validate"],
        ["plan"],
        ["status"],
        ["history"],
        ["stats"],
        ["describe", "a"],
        ["holds"],
        ["dlq", "list"],
        ["notifications"],
        ["logs", run_id],
        ["pause", "a"],
        ["resume", "a"],
        ["apply"],
        ["tick"],
    ]
    for verb in verbs:
        for args in (["-o", "json", *verb], [*verb, "-o", "json"]):
            result = ajs(*args)
            assert result.code in (0, 3), (args, result.err)
            try:
                json.loads(result.out)
            except ValueError:
                raise AssertionError(f"{args}: not JSON: {result.out[:200]!r}") from None
    assert "-o, --output [text|json]" in ajs("status", "--help").out


def test_waits_are_fast_enough_to_ask_on_every_status(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    """A rough guard, not a benchmark: a queue of 200 items is judged in well under a second."""
    for n in range(20):
        write(jobs_dir / f"j{n}.yaml", job("print", "x", schedule={"every": "1m"}, lock="one"))
    assert ajs("apply", "--now", T0).code == 0
    with state.store() as store:
        started = time.monotonic()
        waits = query.waits(store, parse(T0))
        assert time.monotonic() - started < 2
    assert all(w.kind in query.WAIT_KINDS for w in waits)


def test_a_second_resolve_keeps_the_first_note(ajs: Any, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "bad.yaml", job("exit", "2"))
    assert ajs("apply").code == 0
    assert ajs("run", "bad").code != 0
    entry = state.dead_letters()[0]["id"]
    assert ajs("dlq", "resolve", entry, "--note", "fixed the script").code == 0
    again = ajs("dlq", "resolve", entry, "--note", "other")
    assert again.code == 2
    assert "is already resolved" in again.err and "'fixed the script'" in again.err
    assert state.dead_letters()[0]["note"] == "fixed the script"


def test_logs_of_a_job_name_show_its_latest_run(ajs: Any, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "a.yaml", job("print", "hello"))
    assert ajs("apply").code == 0
    assert "has not run yet" in ajs("logs", "a").err
    assert ajs("run", "a").code == 0
    assert ajs("logs", "a").out == "hello\n"


def test_history_filters_and_errors_name_what_is_valid(
    ajs: Any, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    from agentjobs.cli import OUTCOMES
    from agentjobs.retry import Outcome

    assert set(OUTCOMES) == {o.value for o in Outcome}
    other = tmp_path / "other"
    other.mkdir()
    write(jobs_dir / "a.yaml", job("print", "a"))
    write(jobs_dir / "b.yaml", job("print", "b", workdir=str(other)))
    assert ajs("apply").code == 0
    assert ajs("run", "a").code == 0
    assert ajs("run", "b").code == 0
    by_workdir = json.loads(ajs("history", "--workdir", str(other), "-o", "json").out)
    assert [r["job"] for r in by_workdir] == ["b"]
    by_lock = json.loads(ajs("history", "--lock", str(other), "-o", "json").out)
    assert [r["job"] for r in by_lock] == ["b"]
    unknown = ajs("history", "nope")
    assert unknown.code == 2
    assert "no job named 'nope' has applied or run (jobs: a, b)" in unknown.err
    bad = ajs("history", "--outcome", "failure")
    assert bad.code == 2
    assert "'failure' is not one of 'succeeded', 'failed'" in bad.err
    since = ajs("history", "--since", "yesterday")
    assert since.code == 2
    assert "--since yesterday: neither a duration ago" in since.err
    assert "--now" not in since.err


def test_short_ids_name_runs_and_dead_letters_everywhere(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "bad.yaml", job("print", "oops", "exit", "2"))
    assert ajs("apply").code == 0
    assert ajs("run", "bad").code != 0
    assert ajs("run", "bad").code != 0
    first, second = [r["run_id"] for r in state.records("attempt_finished")]
    short = next(
        first[:n] for n in range(4, 26) if not second.startswith(first[:n])
    )  # the shortest prefix that names only the first run
    assert ajs("logs", short).out == "oops\n"
    described = ajs("describe", short)
    assert described.code == 0 and f"Run:          {first}" in described.out
    common = next(n for n in range(26) if first[n] != second[n])
    ambiguous = ajs("logs", first[:common])
    assert ambiguous.code == 2
    assert f"run {first[:common]} is ambiguous: 2 runs start with it" in ambiguous.err
    assert first in ambiguous.err and second in ambiguous.err
    shown = ajs("dlq", "show", short)
    assert shown.code == 0 and shown.out.startswith(f"dead letter {first}: job bad")
    assert ajs("dlq", "resolve", short, "--note", "ok").out.strip() == f"resolved {first}"


# -- the dashboard's reads (issue 14) -----------------------------------------------------------

DAY1, DAY2, DAY3 = "2026-11-23", "2026-11-24", "2026-11-25"


def _three_days(ajs: Any, jobs_dir: Path) -> None:
    """Job `a` (every hour, lock `k`) run by ticks on three days: two on the first two, one on
    the third."""
    write(jobs_dir / "a.yaml", job("print", "x", schedule={"every": "1h"}, lock="k"))
    assert ajs("apply", "--now", f"{DAY1}T09:00:00Z").code == 0
    for moment in (
        f"{DAY1}T10:00:00Z",
        f"{DAY1}T11:30:00Z",
        f"{DAY2}T10:00:00Z",
        f"{DAY2}T11:30:00Z",
        f"{DAY3}T10:00:00Z",
    ):
        assert ajs("tick", "--now", moment).code == 0


def test_the_timeline_reads_only_its_window_and_a_grown_day_only_from_its_end(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    _three_days(ajs, jobs_dir)
    per_day: dict[str, int] = {}
    for record in state.records():
        per_day[record["time"][:10]] = per_day.get(record["time"][:10], 0) + 1
    cache = query.DayCache()
    with state.store() as store:
        now = parse(f"{DAY3}T12:00:00+00:00")
        first = query.timeline(
            store,
            parse(f"{DAY2}T09:00:00+00:00"),
            parse(f"{DAY2}T12:00:00+00:00"),
            now,
            cache=cache,
        )
        assert first.days_read == (DAY2, DAY3)  # and the day after: attempts that ended there
        assert cache.parsed == per_day[DAY2] + per_day[DAY3]
        [lane] = first.lanes
        assert (lane.key, lane.jobs) == ("k", ("a",))
        assert [b.start[:13] for b in lane.bars] == [f"{DAY2}T10", f"{DAY2}T11"]
        again = query.timeline(
            store,
            parse(f"{DAY2}T09:00:00+00:00"),
            parse(f"{DAY2}T12:00:00+00:00"),
            now,
            cache=cache,
        )
        assert again == first and cache.parsed == per_day[DAY2] + per_day[DAY3]
    assert ajs("tick", "--now", f"{DAY3}T11:30:00Z").code == 0  # appends to DAY3
    added = sum(1 for r in state.records() if r["time"][:10] == DAY3) - per_day[DAY3]
    assert added >= 2
    with state.store() as store:
        later = parse(f"{DAY3}T12:00:00+00:00")
        tl = query.timeline(store, parse(f"{DAY3}T00:00:00+00:00"), later, later, cache=cache)
        assert cache.parsed == per_day[DAY2] + per_day[DAY3] + added  # the new lines only
        assert len(tl.lanes[0].bars) == 2


def test_pages_of_runs_go_back_through_every_day_without_reading_all_of_them(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    _three_days(ajs, jobs_dir)
    cache = query.DayCache()
    with state.store() as store:
        everything = list(reversed(query.history(store, limit=None)))
        seen: list[query.RunRow] = []
        older = None
        pages = 0
        while True:
            page = query.runs_page(store, older=older, limit=2, cache=cache)
            seen += page.rows
            pages += 1
            older = page.older
            if older is None:
                break
        assert seen == everything and pages >= 3
        first = query.runs_page(store, limit=100, max_days=1, cache=cache)
        assert first.days_read == (DAY3,)
        assert first.older == DAY2  # the next page starts at the end of the day before
        assert all(r.time.startswith(DAY3) for r in first.rows)
        only = query.runs_page(store, job="a", outcome="succeeded", limit=100, cache=cache)
        assert [r.run_id for r in only.rows] == [
            r.run_id for r in everything if r.event == "attempt_finished"
        ]


def test_dead_letters_are_grouped_by_cause_and_a_run_is_found_by_its_id(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "three.yaml", job("exit", "3"))
    write(jobs_dir / "four.yaml", job("exit", "4"))
    write(jobs_dir / "ok.yaml", job("print", "fine"))
    assert ajs("apply").code == 0
    for name in ("three", "four", "ok"):
        ajs("run", name)
    with state.store() as store:
        [group] = query.dead_letter_groups(store)
        assert (group.cause, group.outcome, len(group.entries)) == ("exit code N", "failed", 2)
        now = datetime.now(UTC)
        ok = next(r for r in state.records("attempt_finished") if r["job"] == "ok")
        view = query.run_view(store, ok["run_id"], now)
        assert view is not None
        assert (view.state, view.finished, view.attempts) == ("succeeded", True, 1)
        assert view.detail.records[0]["output_tail"] == "fine\n"
        dead = query.run_view(store, group.entries[0]["id"], now)
        assert dead is not None and dead.state == "dead_lettered"
        assert query.run_view(store, "01AAAAAAAAAAAAAAAAAAAAAAAA", now) is None
        assert query.run_view(store, "not-a-ulid", now) is None
        log = query.attempt_log(store, ok["run_id"], 1)
        assert (log.exists, log.text, log.verify) == (True, "fine\n", None)


def test_changes_say_what_was_queued_started_finished_dead_lettered_and_held(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    from agentjobs import operate
    from agentjobs.engine import Engine

    write(jobs_dir / "ok.yaml", job("print", "fine"))
    write(jobs_dir / "bad.yaml", job("exit", "5"))
    assert ajs("apply").code == 0
    with state.store() as store:
        before = query.snapshot(store)
        queued = operate.enqueue_manual(Engine(store), "ok")
        after, found = query.changes(store, before, datetime.now(UTC))
        assert [(c.kind, c.job, c.run_id) for c in found] == [("queued", "ok", queued.run_id)]
        assert ajs("tick").code == 0
        assert ajs("run", "bad").code == 1  # came and went between two looks
        with store.transaction(10) as runtime:
            runtime.holds["claude"] = "2099-01-01T00:00:00+00:00"
        _, found = query.changes(store, after, datetime.now(UTC))
    kinds = {(c.kind, c.job, c.outcome) for c in found}
    assert ("finished", "ok", "succeeded") in kinds
    assert ("finished", "bad", "failed") in kinds
    assert ("dead_lettered", "bad", "failed") in kinds
    assert [(c.kind, c.key, c.until) for c in found if c.kind == "held"] == [
        ("held", "claude", "2099-01-01T00:00:00+00:00")
    ]
