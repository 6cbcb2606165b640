"""Cost, budgets, rates and fallback agents end to end: fake agent CLIs on PATH
(tests/fake_claude.py prints claude's or codex's real shapes), `tick --now` for time, both
backends where the state matters."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentjobs.clock import parse
from agentjobs.limits import Limits, allowance, spent, started
from agentjobs.spec import AgentSpec, Budget, JobSpec, Rate
from tests.conftest import State, write
from tests.test_agents import fake  # noqa: F401  (the fixture)

T0 = "2026-11-23T12:00:00Z"


def _job(name: str, agent: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"agent": {"prompt": "Do it.", **agent}, **extra})


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    decoder, events, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        events.append(value)
    return events


def test_codex_cost_is_estimated_from_its_tokens_and_the_price_table(
    fake: Any,  # noqa: F811
    state: State,
    ajs: Any,
    jobs_dir: Path,
) -> None:
    set_modes, _ = fake
    set_modes("tokens=1000000,200000,100000")
    write(jobs_dir / "c.yaml", _job("c", {"kind": "codex", "model": "gpt-5-codex"}))
    write(jobs_dir / "agentjobs.yaml", "pricing: {my-model: {input: 1, output: 2}}\n")
    assert ajs("apply").code == 0
    assert ajs("run", "c").code == 0
    record = state.records("attempt_finished")[0]
    # 800k uncached x $1.25 + 200k cached x $0.125 + 100k out x $10, per million
    assert (record["cost_usd"], record["cost_estimated"]) == (2.025, True)
    facts = record["agent"]
    assert facts["tokens"] == {"input": 800000, "cached": 200000, "output": 100000}
    assert (facts["model"], facts["limit_key"], facts["turns"]) == ("gpt-5-codex", "codex", 1)
    # a model from the config's table (cached priced as input when not given)
    write(jobs_dir / "c.yaml", _job("c", {"kind": "codex", "model": "my-model-2"}))
    assert ajs("apply").code == 0
    assert ajs("run", "c").code == 0
    assert state.records("attempt_finished")[1]["cost_usd"] == 1.2


def test_a_day_cap_holds_the_job_until_the_next_day_in_the_configs_zone(
    fake: Any,  # noqa: F811
    state: State,
    ajs: Any,
    jobs_dir: Path,
    tmp_path: Path,
) -> None:
    """$0.25 a run, $0.50 a day: two runs, then the third waits (not an attempt, not dead-
    lettered, one budget_exceeded event) until midnight in Auckland (11:00 UTC)."""
    set_modes, calls = fake
    set_modes("cost=0.25")
    events = tmp_path / "events.json"
    write(jobs_dir / "agentjobs.yaml", "timezone: Pacific/Auckland\n")  # UTC+13 in November
    notify = {"command": ["sh", "-c", f"cat >> {events}"]}
    write(
        jobs_dir / "n.yaml",
        _job(
            "n",
            {"kind": "claude"},
            schedule={"cron": "*/10 * * * *"},
            budget={"per_day": 0.5},
            notify=notify,
        ),
    )
    assert ajs("apply", "--now", "2026-11-23T07:59:00Z").code == 0
    for minute in ("08:00", "08:10", "08:20", "08:30"):
        ajs("tick", "--now", f"2026-11-23T{minute}:00Z")
    assert len(state.records("attempt_finished")) == 2
    assert len(calls()) == 2
    assert [i.state for i in state.queue()] == ["queued"]  # waiting, not an attempt
    assert state.dead_letters() == []
    budget_events = [e for e in _events(events) if e["event"] == "budget_exceeded"]
    assert len(budget_events) == 1  # once, though two ticks met the cap
    reason = "held: budget job n ($0.50 of $0.50) until 2026-11-23T11:00:00+00:00"
    assert budget_events[0]["error"] == reason
    # the next day in Auckland starts at 11:00 UTC, the same UTC date
    ajs("tick", "--now", "2026-11-23T11:00:30Z")
    assert len(state.records("attempt_finished")) == 3
    spend = state.runtime().ledger["spend"]
    assert spend["2026-11-24"] == {"job:n": 0.25, "account:claude": 0.25, "total": 0.25}
    assert spend["2026-11-23"]["job:n"] == 0.5


def test_claude_is_told_its_remaining_cap_and_others_are_stopped_past_it(
    fake: Any,  # noqa: F811
    state: State,
    ajs: Any,
    jobs_dir: Path,
) -> None:
    set_modes, calls = fake
    set_modes("cost=0.25")
    config = "budgets: {per_day: 10, accounts: {claude: {per_day: 0.6}}}\n"
    write(jobs_dir / "agentjobs.yaml", config)
    write(jobs_dir / "a.yaml", _job("a", {"kind": "claude"}, budget={"per_run": 0.5}))
    assert ajs("apply").code == 0
    assert ajs("run", "a").code == 0
    argv = calls()[0]
    assert argv[argv.index("--max-budget-usd") + 1] == "0.5"  # per_run
    assert ajs("run", "a").code == 0  # $0.25 spent, the next one likely $0.25 (p90)
    argv = calls()[1]
    assert argv[argv.index("--max-budget-usd") + 1] == "0.35"  # what the account has left
    held = ajs("run", "a")  # $0.50 spent: $0.25 more would pass $0.60
    assert "held: budget account claude ($0.50 of $0.60; this run ~$0.25) until" in held.err
    assert len(calls()) == 2
    # codex reports tokens only: its supervisor stops it once they cost more than the cap
    set_modes("hang_after=1000000,0,1000000")  # $11.25 at gpt-5-codex prices
    write(jobs_dir / "b.yaml", _job("b", {"kind": "codex"}, budget={"per_run": 1}))
    assert ajs("apply").code == 0
    result = ajs("run", "b")
    assert result.code != 0
    record = state.records("attempt_finished")[-1]
    assert record["outcome"] == "budget"
    assert record["duration_s"] < 30  # stopped, not waited for
    assert record["error"].startswith("budget: the attempt spent $11.2500, more than its cap")
    assert [d["job"] for d in state.dead_letters()] == ["b"]  # never retried


def test_a_rate_paces_an_accounts_attempt_starts(
    fake: Any,  # noqa: F811
    state: State,
    ajs: Any,
    jobs_dir: Path,
    tmp_path: Path,
) -> None:
    set_modes, calls = fake
    set_modes("ok")
    write(jobs_dir / "agentjobs.yaml", "rates: {claude: {max: 2, per: 1h}}\n")
    for name in ("a", "b", "c"):
        folder = tmp_path / "work" / name
        folder.mkdir(parents=True)
        write(
            jobs_dir / f"{name}.yaml",
            _job(name, {"kind": "claude"}, workdir=str(folder), schedule={"every": "2h"}),
        )
    assert ajs("apply", "--now", T0).code == 0
    ajs("tick", "--now", T0)
    assert len(state.records("attempt_finished")) == 2
    assert [i.job for i in state.queue("queued")] == ["c"]  # waits, not counted
    ajs("tick", "--now", "2026-11-23T12:59:00Z")
    assert len(state.records("attempt_finished")) == 2
    ajs("tick", "--now", "2026-11-23T13:00:01Z")
    assert len(state.records("attempt_finished")) == 3
    assert len(calls()) == 3


def test_fallback_runs_only_while_the_primary_is_held_by_a_usage_limit(
    fake: Any,  # noqa: F811
    state: State,
    ajs: Any,
    jobs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_modes, calls = fake
    fallback = [{"kind": "codex", "model": "gpt-5-codex"}]
    for name in ("a", "b"):
        write(jobs_dir / f"{name}.yaml", _job(name, {"kind": "claude", "fallback": fallback}))
    assert ajs("apply").code == 0
    reset = datetime.now(UTC) + timedelta(hours=2)
    monkeypatch.setenv("FAKE_RESET_AT", str(int(reset.timestamp())))
    set_modes("is_error", "ok", "usage_limit", "ok")
    assert ajs("run", "a").code != 0  # an ordinary failure: no fallback
    assert ajs("run", "b").code == 0
    assert ajs("run", "a").code != 0  # claude's usage limit: held until its reset
    assert [c[0] for c in calls()] == ["-p", "-p", "-p"]  # claude each time
    runtime = state.runtime()
    assert set(runtime.holds) == {"claude"}
    # its retry does not wait for claude's reset: it runs a fallback after the backoff
    retry = next(i for i in runtime.queue.values() if i.job == "a")
    assert retry.not_before < runtime.holds["claude"]
    # a scheduled run while held runs the fallback
    write(
        jobs_dir / "c.yaml",
        _job("c", {"kind": "claude", "fallback": fallback}, schedule={"every": "1h"}),
    )
    assert ajs("apply", "--now", T0).code == 0
    ajs("tick", "--now", T0)
    record = next(r for r in state.records("attempt_finished") if r["job"] == "c")
    assert record["outcome"] == "succeeded"
    assert record["agent"]["kind"] == "codex"
    assert record["agent"]["fallback"].startswith("instead of claude: claude usage limit until")
    assert record["cost_estimated"] is True
    assert calls()[-1][0] == "exec"


def test_the_ledger_rules_without_io() -> None:
    job = JobSpec(
        name="j",
        workdir="/w",
        lock="/w",
        agent=AgentSpec(kind="claude", prompt="p"),
        budget=Budget(per_run=1.0, per_day=3.0),
        rate=Rate(max=1, per=600),
    )
    limits = Limits(timezone="Europe/Warsaw")
    ledger: dict[str, Any] = {}
    now = parse("2026-11-23T22:30:00Z")  # 23:30 in Warsaw
    go = allowance(job, {}, ledger, limits, now)
    assert (go.reason, go.cap_usd) == (None, 1.0)
    for cost in (0.4, 0.9, 0.5):
        finished = {"job": "j", "finished_at": "2026-11-23T22:30:00Z", "cost_usd": cost}
        spent(ledger, job, finished, limits)
    # projected: p90 of the job's costs (0.9), capped by per_run: 1.8 + 0.9 > 3? no
    assert allowance(job, {}, ledger, limits, now).cap_usd == pytest.approx(1.0)
    spent(ledger, job, {"job": "j", "finished_at": "2026-11-23T22:31:00Z", "cost_usd": 0.5}, limits)
    held = allowance(job, {}, ledger, limits, now)
    assert held.reason == (
        "held: budget job j ($2.30 of $3.00; this run ~$0.90) until 2026-11-23T23:00:00+00:00"
    )
    assert held.notice == "budget job j@2026-11-23"
    # a person's manual run is held too (money is a hard cap), unlike by a usage hold or rate
    assert allowance(job, {}, ledger, limits, now, manual=True).reason == held.reason
    assert allowance(job, {"claude": "2026-11-24T00:00:00Z"}, {}, limits, now).reason == (
        "held: claude usage limit until 2026-11-24T00:00:00Z"
    )
    assert allowance(job, {"claude": "2026-11-24T00:00:00Z"}, {}, limits, now, manual=True).ok
    # the job's rate: one start per 10 minutes
    fresh: dict[str, Any] = {}
    started(fresh, job, allowance(job, {}, fresh, limits, now), limits, now)
    assert allowance(job, {}, fresh, limits, now).reason == (
        "held: rate job:j 1/10m until 2026-11-23T22:40:00+00:00"
    )
    assert allowance(job, {}, fresh, limits, parse("2026-11-23T22:40:01Z")).ok
    assert allowance(job, {}, ledger, limits, parse("2026-11-23T23:00:00Z")).reason is None


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_rate_holds_across_hosts_claiming_at_once(
    fake: Any,  # noqa: F811
    state: State,
    ajs: Any,
    jobs_dir: Path,
    tmp_path: Path,
) -> None:
    """Two hosts tick at the same moment; the account may start one attempt an hour."""
    set_modes, calls = fake
    set_modes("ok")
    write(jobs_dir / "agentjobs.yaml", "rates: {claude: {max: 1, per: 1h}}\n")
    for name in ("a", "b", "c", "d"):
        folder = tmp_path / "work" / name
        folder.mkdir(parents=True)
        write(
            jobs_dir / f"{name}.yaml",
            _job(name, {"kind": "claude"}, workdir=str(folder), schedule={"every": "2h"}),
        )
    assert ajs("apply", "--now", T0).code == 0
    ticks = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentjobs",
                "--state-dir",
                state.location,
                "tick",
                "--now",
                T0,
                "--host",
                host,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for host in ("h1", "h2", "h3")
    ]
    for tick in ticks:
        tick.communicate(timeout=60)
    assert len(state.records("attempt_started")) == 1
    assert len(calls()) == 1


def test_validate_names_limits_that_cannot_work(aj: Any, jobs_dir: Path) -> None:
    write(jobs_dir / "agentjobs.yaml", "rates: {claude: {max: 5, per: 8d}}\n")
    write(
        jobs_dir / "j.yaml",
        _job(
            "j",
            {"kind": "claude", "fallback": [{"kind": "custom"}]},
            budget={"per_run": 5, "per_day": 1},
            rate={"max": 1, "per": "0s"},
        ),
    )
    result = aj("validate")
    assert result.code != 0
    for message in (
        "rates.claude.per: a rate's window must be between 1s and 7d",
        "budget.per_run: per_run is more than per_day: no attempt could ever start",
        "rate.per: a rate's window must be between 1s and 7d",
        "agent.fallback[0].command: a custom fallback needs a command",
    ):
        assert message in result.out + result.err, message
