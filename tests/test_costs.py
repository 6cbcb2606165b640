"""Cost where users look (issue 12, part 2): `history`, `stats`, `metrics`, the dead letters and
`status` show what agent attempts cost, read through `agentjobs/costs.py`.

Attempts are real runs of fake agent CLIs on PATH: `claude` is tests/fake_claude.py (it reports
its own cost, $0.25, and 3 turns); `codex` prints one `turn.completed` with token usage, priced
from the table (gpt-5-codex: 800 uncached input, 200 cached, 500 output tokens = $0.006025,
estimated). The stats test appends records through the store to place them on given days.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentjobs.store import open_store
from tests.conftest import State, write

FAKE_COMMAND = str(Path(__file__).with_name("fake_agent.py"))
T0 = "2026-11-23T12:00:00Z"
CODEX_USD = 0.006025  # (800 x 1.25 + 200 x 0.125 + 500 x 10) / 1e6
CODEX = """
import json
print(json.dumps({"type": "thread.started", "thread_id": "thread-1"}), flush=True)
print(json.dumps({"type": "turn.started"}), flush=True)
usage = {"input_tokens": 1000, "cached_input_tokens": 200, "output_tokens": 500}
print(json.dumps({"type": "turn.completed", "usage": usage}), flush=True)
"""


@pytest.fixture
def agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Fake `claude` and `codex` on PATH; returns set_modes for the fake claude."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = Path(__file__).with_name("fake_claude.py").read_text()
    for name, source in (("claude", claude), ("codex", CODEX)):
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\n{source}")
        exe.chmod(0o755)
    data = tmp_path / "fake-agent"
    data.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AGENT_DIR", str(data))

    def set_modes(*modes: str) -> None:
        (data / "modes.json").write_text(json.dumps(list(modes)))

    set_modes("ok")
    return set_modes


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_history_shows_each_attempts_cost_estimated_or_not_and_its_turns(
    aj, agents: Any, jobs_dir: Path
) -> None:
    write(jobs_dir / "fix.yaml", "agent: {kind: claude, prompt: Fix it.}\n")
    write(jobs_dir / "port.yaml", "agent: {kind: codex, prompt: Port it.}\n")
    write(jobs_dir / "plain.yaml", json.dumps({"command": [sys.executable, FAKE_COMMAND]}))
    assert aj("apply").code == 0
    for name in ("fix", "port", "plain"):
        assert aj("run", name).code == 0, name

    rows = json.loads(aj("-o", "json", "history").out)
    assert [(r["job"], r["cost_usd"], r["cost_estimated"], r["turns"]) for r in rows] == [
        ("fix", 0.25, False, 3),  # claude's own figure
        ("port", CODEX_USD, True, 1),  # tokens x the price table
        ("plain", None, False, None),  # no agent: no cost, never $0
    ]
    table = aj("history").out.splitlines()
    header = table[0].split()
    assert header[6:] == ["DURATION", "COST", "TURNS", "DETAIL"]
    assert [line.split()[9:11] for line in table[1:]] == [
        ["$0.2500", "3"],
        ["~$0.0060", "1"],
        ["-", "-"],
    ]


def test_metrics_count_cost_by_job_and_agent_also_from_cached_days(
    aj, agents: Any, jobs_dir: Path, state_dir: Path
) -> None:
    schedule = '\nschedule: {every: "1h"}\n'
    write(jobs_dir / "fix.yaml", "agent: {kind: claude, prompt: Fix it.}" + schedule)
    write(jobs_dir / "port.yaml", "agent: {kind: codex, prompt: Port it.}" + schedule)
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 0
    assert aj("tick", "--now", "2026-11-23T13:00:05Z").code == 0

    result = aj("metrics", "--now", "2026-11-23T14:00:00Z")
    assert result.code == 0, result.err
    assert "# TYPE agentjobs_cost_usd_total counter" in result.out
    assert "# HELP agentjobs_cost_usd_total " in result.out
    parsed = _samples(result.out)
    costs = {k: v for k, v in parsed.items() if k[0] == "agentjobs_cost_usd_total"}
    assert costs == {
        ("agentjobs_cost_usd_total", (("agent", "claude"), ("job", "fix"))): 0.5,
        ("agentjobs_cost_usd_total", (("agent", "codex"), ("job", "port"))): 2 * CODEX_USD,
    }
    # the next day the 23rd is a closed day: counted once, then read from the cache
    for _ in range(2):
        later = _samples(aj("metrics", "--now", "2026-11-24T09:00:00Z").out)
        assert {k: v for k, v in later.items() if k in costs} == costs
    cached = json.loads((state_dir / "metrics-cache.json").read_text())
    assert cached["days"]["2026-11-23"]["costs"] == {
        "fix": {"claude": 0.5},
        "port": {"codex": 0.01205},
    }


def _finished(
    job: str,
    run: str,
    attempt: int,
    at: str,
    usd: float | None,
    *,
    estimated: bool = False,
    outcome: str = "succeeded",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event": "attempt_finished",
        "time": at,
        "run_id": run,
        "job": job,
        "attempt": attempt,
        "trigger": "schedule",
        "started_at": at,
        "finished_at": at,
        "duration_s": 1.0,
        "outcome": outcome,
    }
    if usd is not None:
        kind = "codex" if estimated else "claude"
        record["cost_usd"] = usd
        if estimated:
            record["cost_estimated"] = True
        record["agent"] = {"kind": kind, "limit_key": f"{kind}-team", "cost_usd": usd}
    return record


def test_stats_sum_cost_by_budget_day_job_and_account_and_count_runs_and_attempts(
    aj, jobs_dir: Path, state_dir: Path
) -> None:
    # budget days are the config's time zone: 23:30 UTC on the 22nd is the 23rd in Berlin, so
    # run R1's two attempts fall on one day
    write(jobs_dir / "agentjobs.yaml", "timezone: Europe/Berlin\n")
    write(jobs_dir / "fix.yaml", "agent: {kind: claude, prompt: x}\n")
    assert aj("apply").code == 0
    records = [
        _finished("fix", "R1", 1, "2026-11-22T23:30:00+00:00", 0.5, outcome="failed"),
        _finished("fix", "R1", 2, "2026-11-23T10:00:00+00:00", 0.25),
        _finished("port", "R2", 1, "2026-11-24T10:00:00+00:00", 0.1, estimated=True),
        _finished("plain", "R3", 1, "2026-11-24T11:00:00+00:00", None),
        _finished("fix", "R0", 1, "2026-11-15T10:00:00+00:00", 9.0),  # before the 7 days
    ]
    store = open_store(str(state_dir))
    for record in records:
        store.append_records([record], datetime.fromisoformat(record["time"]))

    result = aj("-o", "json", "stats", "--now", "2026-11-24T12:00:00Z")
    assert result.code == 0, result.err
    review = json.loads(result.out)
    cost = review["cost"]
    assert cost["timezone"] == "Europe/Berlin"
    assert cost["total"] == {"runs": 3, "attempts": 4, "cost_usd": 0.85, "cost_estimated": True}
    assert [d["day"] for d in cost["days"]] == [f"2026-11-{d}" for d in range(18, 25)]
    by_day = {d["day"]: d for d in cost["days"]}
    assert by_day["2026-11-23"] == {
        "day": "2026-11-23",
        "runs": 1,
        "attempts": 2,
        "cost_usd": 0.75,
        "cost_estimated": False,
    }
    assert by_day["2026-11-24"]["cost_usd"] == 0.1 and by_day["2026-11-24"]["cost_estimated"]
    assert by_day["2026-11-20"] == {
        "day": "2026-11-20",
        "runs": 0,
        "attempts": 0,
        "cost_usd": None,
        "cost_estimated": False,
    }
    assert cost["jobs"] == [  # jobs with a known cost; `plain` ran no agent
        {"job": "fix", "runs": 1, "attempts": 2, "cost_usd": 0.75, "cost_estimated": False},
        {"job": "port", "runs": 1, "attempts": 1, "cost_usd": 0.1, "cost_estimated": True},
    ]
    assert [tuple(a.values()) for a in cost["accounts"]] == [
        # account (the limit key), runs, attempts, cost_usd, cost_estimated
        ("claude-team", 1, 2, 0.75, False),
        ("codex-team", 1, 1, 0.1, True),
    ]
    assert review["last_7_days"]["runs"] == 3 and review["last_7_days"]["processed"] == 4
    assert {j["job"]: j["runs"] for j in review["jobs"]} == {"fix": 1, "port": 1, "plain": 1}

    text = aj("stats", "--now", "2026-11-24T12:00:00Z").out
    assert "last 7 days: 4 processed, 1 failed (25%), 0 dead-lettered (3 runs)" in text
    assert "cost, last 7 days (Europe/Berlin days): ~$0.8500 in 3 runs, 4 attempts" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["2026-11-23", "$0.7500", "1", "2"] in lines
    assert ["2026-11-20", "-", "0", "0"] in lines
    assert ["port", "~$0.1000", "1", "1"] in lines
    assert ["claude-team", "$0.7500", "1", "2"] in lines


def test_dead_letters_show_what_the_run_cost(aj, agents: Any, jobs_dir: Path) -> None:
    agents("is_error")  # claude reports an error (and its cost) every time
    write(
        jobs_dir / "fix.yaml",
        """
        agent: {kind: claude, prompt: Fix it.}
        schedule: {every: 1d}
        retry: {attempts: 2, backoff: {initial: 10m, jitter: 0s}}
        """,
    )
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 1
    assert aj("tick", "--now", "2026-11-23T12:10:05Z").code == 1  # dead-lettered

    entry = json.loads(aj("-o", "json", "dlq", "list").out)[0]
    assert (entry["cost_usd"], entry["cost_estimated"]) == (0.5, False)
    table = aj("dlq", "list").out.splitlines()
    assert table[0].split()[4:7] == ["ATTEMPTS", "COST", "LAST"]
    assert table[1].split()[6:9] == ["2", "$0.5000", "failed"]
    shown = aj("dlq", "show", entry["id"])
    assert "cost: $0.5000 over 2 attempts" in shown.out
    assert shown.out.count(", cost $0.2500") == 2
    assert json.loads(aj("-o", "json", "dlq", "show", entry["id"]).out)["cost_usd"] == 0.5


def test_status_shows_spend_today_against_the_caps_and_jobs_held_by_a_budget_or_rate(
    ajs, agents: Any, jobs_dir: Path, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    write(
        jobs_dir / "agentjobs.yaml",
        "budgets: {per_day: 10, accounts: {claude: {per_day: 5}}}\n",
    )
    hourly = "agent: {kind: claude, prompt: x}\nschedule: {every: 1h}\n"
    write(jobs_dir / "fix.yaml", hourly + "budget: {per_day: 0.3}\n")
    write(jobs_dir / "paced.yaml", hourly + "rate: {max: 1, per: 1d}\n")
    write(jobs_dir / "plain.yaml", json.dumps({"command": [sys.executable, FAKE_COMMAND]}))
    assert ajs("apply", "--now", T0).code == 0
    assert ajs("tick", "--now", T0).code == 0  # fix and paced run: $0.25 each
    # an hour later both are due again: fix's next $0.25 would pass its $0.30, paced's 1/1d
    assert ajs("tick", "--now", "2026-11-23T13:00:05Z").code == 0
    assert len(state.records("attempt_finished")) == 2
    ledger = state.runtime().ledger

    now = "2026-11-23T13:30:00Z"
    rows = {r["job"]: r for r in json.loads(ajs("-o", "json", "status", "--now", now).out)}
    assert rows["fix"]["limit_hold"] == (
        "held: budget job fix ($0.25 of $0.30; this run ~$0.25) until 2026-11-24T00:00:00+00:00"
    )
    assert rows["paced"]["limit_hold"] == (
        "held: rate job:paced 1/1d until 2026-11-24T12:00:00+00:00"
    )
    assert (rows["fix"]["spend_today"], rows["paced"]["spend_today"]) == (0.25, 0.25)
    assert (rows["plain"]["limit_hold"], rows["plain"]["spend_today"]) == (None, None)
    assert state.runtime().ledger == ledger  # asking the claim's rule marked nothing

    lines = ajs("status", "--now", now).out.splitlines()
    fix = next(line for line in lines if line.startswith("fix "))
    assert (
        "held: budget job fix ($0.25 of $0.30; this run ~$0.25) until 2026-11-24T00:00:00+00:00"
        in fix
    )
    paced = next(line for line in lines if line.startswith("paced "))
    assert "held: rate job:paced 1/1d until 2026-11-24T12:00:00+00:00" in paced
    at = lines.index("spend today (2026-11-23, UTC):")
    assert lines[at + 1 :] == [
        "  total           $0.50 of $10.00",
        "  account claude  $0.50 of $5.00",
        "  job fix         $0.25 of $0.30",
        "  job paced       $0.25",
    ]

    review = json.loads(ajs("-o", "json", "stats", "--now", now).out)
    assert review["ledger"] == {
        "day": "2026-11-23",
        "timezone": "UTC",
        "spend": {"total": 0.5, "account:claude": 0.5, "job:fix": 0.25, "job:paced": 0.25},
        "caps": {"total": 10.0, "account:claude": 5.0, "job:fix": 0.3},
    }
    assert review["held_jobs"] == [
        {
            "job": "fix",
            "reason": "budget job fix ($0.25 of $0.30; this run ~$0.25) until 2026-11-24T00:00:00+00:00",
            "until": None,
        },
        {
            "job": "paced",
            "reason": "rate job:paced 1/1d until 2026-11-24T12:00:00+00:00",
            "until": None,
        },
    ]
    # the next day nothing is spent yet: the caps are shown, at $0
    tomorrow = ajs("status", "--now", "2026-11-24T00:30:00Z").out
    assert "  job fix         $0.00 of $0.30" in tomorrow


def test_status_without_limits_or_spend_shows_no_spend(aj, jobs_dir: Path) -> None:
    write(jobs_dir / "plain.yaml", json.dumps({"command": [sys.executable, FAKE_COMMAND]}))
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 0
    assert "spend today" not in aj("status", "--now", T0).out
    assert json.loads(aj("-o", "json", "stats", "--now", T0).out)["ledger"] is None
