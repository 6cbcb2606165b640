"""The morning review: what ran, what failed, what it cost and what waits for a person, today and
over 7 days.

Reads the last eight day files of run records (never the whole history), the dead letters and the
runtime snapshot. Counts are of attempts (`processed`, `attempts`) and of runs (the distinct runs
those attempts belong to). Cost (`costs.py`) is summed over the last 7 budget days (today and the
6 before it, in the config's `timezone`, as budgets count days): by day, by job and by account.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agentjobs import costs, query
from agentjobs.clock import iso
from agentjobs.store import AppliedJob, Runtime, Store

WINDOW_DAYS = 7
SLOWEST = 5


# outcomes of an attempt that did its work (awaiting review: a person decides what lands)
WORKED = ("succeeded", "awaiting_review")


def _p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _totals(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    finished = [
        r for r in records if r.get("event") == "attempt_finished" and r.get("outcome") != "skipped"
    ]
    failed = sum(r.get("outcome") not in WORKED for r in finished)
    return {
        "processed": len(finished),
        "runs": len({r.get("run_id") for r in finished}),
        "succeeded": len(finished) - failed,
        "failed": failed,
        "dead_lettered": sum(r.get("event") == "dead_lettered" for r in records),
        "failure_rate": round(failed / len(finished), 4) if finished else None,
    }


def morning_review(store: Store, now: datetime) -> dict[str, Any]:
    """Counts for today (UTC) and the last 7 days, durations by job, cost (`_cost_review`) and
    today's spend against the caps, open dead letters and held jobs (a usage-limit hold in
    force, paused, or queued items waiting on a budget or a rate)."""
    now = now.astimezone(UTC)
    day_start = iso(now.replace(hour=0, minute=0, second=0, microsecond=0)) or ""
    week_start_at = now - timedelta(days=WINDOW_DAYS)
    week_start = iso(week_start_at) or ""
    exists = store.exists()
    # the cost window's first budget day starts at most 7 days and a DST hour ago
    read = list(store.records(week_start_at - timedelta(hours=1)) if exists else ())
    week = [r for r in read if str(r.get("time", "")) >= week_start]
    today = [r for r in week if str(r.get("time", "")) >= day_start]

    jobs = _by_job(week)
    slowest = sorted(jobs, key=lambda j: (-j["p95_duration_s"], j["job"]))[:SLOWEST]

    dead_letters = [
        {
            "id": e.get("id"),
            "job": e.get("job"),
            "status": e.get("status"),
            "created_at": e.get("created_at"),
            "reason": e.get("reason"),
        }
        for e in (store.dead_letters() if exists else [])
        if e.get("status") != "resolved"
    ]

    runtime = store.runtime() if exists else None
    now_text = iso(now) or ""
    holds = {k: v for k, v in (runtime.holds.items() if runtime else ()) if v > now_text}
    applied = store.applied() if exists else {}
    config = store.config() if exists else {}
    configured = costs.limits_configured(config, applied)
    # a budget or a rate holding a job's items, as the claim's rule words it (query.py)
    limited = {j.job: j.held for j in query.jobs(store, now) if j.held} if configured else {}
    held = _held_jobs(applied, runtime, holds, limited)

    spent = configured or (runtime is not None and bool(runtime.ledger))
    ledger = costs.ledger_view(store, now) if spent else None
    return {
        "now": now_text,
        "today": _totals(today),
        "last_7_days": _totals(week),
        "jobs": jobs,
        "cost": _cost_review(read, config, now),
        "ledger": ledger,  # today's spend against the caps
        "slowest": [
            {"job": j["job"], "p95_duration_s": j["p95_duration_s"], "attempts": j["attempts"]}
            for j in slowest
        ],
        "dead_letters_open": dead_letters,
        "holds": [{"key": k, "until": v} for k, v in sorted(holds.items())],
        "held_jobs": held,
    }


def _by_job(week: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per job over the week: runs, attempts, failures, average, p95 and longest duration."""
    durations: dict[str, list[float]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    runs: dict[str, set[str]] = {}
    for r in week:
        if r.get("event") != "attempt_finished" or r.get("outcome") == "skipped":
            continue
        job = str(r.get("job", ""))
        durations.setdefault(job, []).append(float(r.get("duration_s") or 0.0))
        runs.setdefault(job, set()).add(str(r.get("run_id", "")))
        by = outcomes.setdefault(job, {})
        by[str(r.get("outcome"))] = by.get(str(r.get("outcome")), 0) + 1
    jobs: list[dict[str, Any]] = []
    for job in sorted(durations):
        values = durations[job]
        attempts = len(values)
        failed = attempts - sum(outcomes[job].get(o, 0) for o in WORKED)
        jobs.append(
            {
                "job": job,
                "runs": len(runs[job]),
                "attempts": attempts,
                "failed": failed,
                "failure_rate": round(failed / attempts, 4),
                "avg_duration_s": round(sum(values) / attempts, 3),
                "p95_duration_s": round(_p95(values), 3),
                "max_duration_s": round(max(values), 3),
            }
        )
    return jobs


def _held_jobs(
    applied: Mapping[str, AppliedJob],
    runtime: Runtime | None,
    holds: Mapping[str, str],
    limited: Mapping[str, str | None],
) -> list[dict[str, Any]]:
    """Jobs that cannot run now: paused, held by a usage limit, or by a budget or a rate."""
    held: list[dict[str, Any]] = []
    for name in sorted(set(applied) | set(runtime.jobs if runtime else ())):
        state = runtime.jobs.get(name) if runtime else None
        if state is not None and state.paused:
            held.append({"job": name, "reason": "paused", "until": None})
            continue
        spec = applied.get(name)
        key = spec.limit_key if spec else None
        reason = limited.get(name)
        if key is not None and key in holds:
            held.append({"job": name, "reason": f"{key} usage limit", "until": holds[key]})
        elif reason:  # a budget or a rate: the reason says until when
            held.append({"job": name, "reason": reason.removeprefix("held: "), "until": None})
    return held


def _cost_review(
    records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """Runs, attempts and cost over the last 7 budget days: in all, by day (oldest first, every
    day), by job and by account (those with a known cost)."""
    from datetime import date

    from agentjobs.clock import parse
    from agentjobs.limits import Limits

    limits = Limits.from_config(config)
    today = date.fromisoformat(limits.day(now)[0])
    days = {(today - timedelta(days=back)).isoformat(): costs.Tally() for back in range(6, -1, -1)}
    everything = costs.Tally()
    jobs: dict[str, costs.Tally] = {}
    accounts: dict[str, costs.Tally] = {}
    for r in records:
        if r.get("event") != "attempt_finished" or r.get("outcome") == "skipped":
            continue
        try:
            day, _ = limits.day(parse(str(r.get("finished_at") or r.get("time"))))
        except ValueError:
            continue  # a damaged time: no day to count it in
        if day not in days:
            continue
        for tally in (everything, days[day], jobs.setdefault(str(r.get("job", "")), costs.Tally())):
            tally.add(r)
        account = costs.attempt_account(r)
        if account is not None:
            accounts.setdefault(account, costs.Tally()).add(r)
    return {
        "timezone": limits.timezone,
        "total": everything.to_dict(),
        "days": [{"day": day, **tally.to_dict()} for day, tally in days.items()],
        "jobs": [
            {"job": job, **tally.to_dict()}
            for job, tally in sorted(jobs.items())
            if tally.cost is not None
        ],
        "accounts": [
            {"account": key, **tally.to_dict()}
            for key, tally in sorted(accounts.items())
            if tally.cost is not None
        ],
    }
