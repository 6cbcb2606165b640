"""Money and pacing: budgets (hard caps in USD per run and per day), rates (at most N attempt
starts per sliding window) and fallback agents, judged before a claim from the ledger.

The ledger lives in the state with the queue (`Runtime.ledger`), so a claim reads and writes it
in the same transaction as the item it claims (on PostgreSQL its row is locked: the caps and
rates hold across hosts). Its JSON form:

    {"spend": {"2026-12-01": {"job:NAME": usd, "account:KEY": usd, "total": usd}},
     "starts": {"job:NAME" | "account:KEY": [iso, ...]},   # attempt starts, for rates
     "costs": {"NAME": [usd, ...]},                        # the job's last attempts' costs
     "told": ["budget total@2026-12-01", ...]}             # budget_exceeded notices sent

Days are the config's time zone (`timezone`). Spend comes from the attempt_finished records as
they are settled (`spent`); a claim adds its start (`started`). A usage hold never dead-letters:
an item over a cap waits in the queue, not counted as an attempt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agentjobs.clock import iso, parse
from agentjobs.spec import AgentSpec, Budget, JobSpec, Rate

COSTS_KEPT = 20  # a job's last attempt costs kept for its projection (p90)
DAYS_KEPT = 8  # days of spend kept (a week back, for `status` and `describe`)
MAX_RATE_WINDOW_S = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The installation's caps and rates (agentjobs.yaml), from `Store.config()`."""

    budget: Budget | None = None
    accounts: Mapping[str, Budget] = field(default_factory=dict)
    rates: Mapping[str, Rate] = field(default_factory=dict)
    timezone: str = "UTC"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Limits:
        budget = config.get("budget")
        return cls(
            budget=Budget(**budget) if budget else None,
            accounts={k: Budget(**v) for k, v in (config.get("accounts") or {}).items()},
            rates={k: Rate(**v) for k, v in (config.get("rates") or {}).items()},
            timezone=str(config.get("timezone") or "UTC"),
        )

    def applies_to(self, job: JobSpec) -> bool:
        """Whether any cap or rate concerns `job` (else a claim never reads the ledger)."""
        if job.agent is None:
            return False
        return bool(job.budget or job.rate or self.budget or self.accounts or self.rates) and any(
            True for _ in _agents(job.agent)
        )

    def day(self, now: datetime) -> tuple[str, datetime]:
        """The budget day `now` falls in, and when the next one starts."""
        local = now.astimezone(ZoneInfo(self.timezone))
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        following = (start + timedelta(days=1, hours=3)).replace(hour=0)  # DST-proof
        return local.date().isoformat(), following.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Allowance:
    """What the limits say about running an attempt of a job now: a hold (`reason`, and
    `notice` once per cap and day), or a go with the agent to run and what it may spend."""

    reason: str | None = None
    notice: str | None = None  # "budget <name>@<day>": a budget_exceeded notice to send once
    cap_usd: float | None = None  # the most this attempt may spend
    fallback: int | None = None  # index into agent.fallback of the agent to run instead
    fallback_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def allowance(
    job: JobSpec,
    holds: Mapping[str, str],
    ledger: Mapping[str, Any],
    limits: Limits,
    now: datetime,
    *,
    manual: bool = False,
) -> Allowance:
    """Whether an attempt of `job` may start now. A usage limit on the agent's key runs the
    first fallback whose key is free (never for any other reason). Budgets bind every run, a
    manual one too (money is a hard cap); usage holds and rates do not bind a manual run."""
    if job.agent is None:
        return Allowance()
    stamp = iso(now) or ""
    agent, fallback, why = job.agent, None, None
    if not manual and holds.get(agent.key, "") > stamp:
        held = f"held: {agent.key} usage limit until {holds[agent.key]}"
        for index, other in enumerate(agent.fallback):
            if holds.get(other.key, "") <= stamp:
                agent, fallback = other, index
                why = f"{job.agent.key} usage limit until {holds[job.agent.key]}"
                break
        else:
            return Allowance(held)
    if not manual:
        for scope, rate in _rates(job, agent, limits):
            starts = [s for s in ledger.get("starts", {}).get(scope, ()) if s]
            window = [s for s in starts if parse(s) > now - timedelta(seconds=rate.per)]
            if len(window) >= rate.max:
                until = parse(min(window)) + timedelta(seconds=rate.per)
                return Allowance(
                    f"held: rate {scope} {rate.max}/{_span(rate.per)} until {iso(until)}"
                )
    day, following = limits.day(now)
    spent_today = ledger.get("spend", {}).get(day, {})
    projected = _projected(job, ledger)
    cap = job.budget.per_run if job.budget else None
    for name, scope, budget in _budgets(job, agent, limits):
        if budget.per_day is None:
            continue
        spent = float(spent_today.get(scope, 0.0))
        if spent >= budget.per_day or spent + projected > budget.per_day:
            likely = f"; this run ~${projected:.2f}" if spent < budget.per_day else ""
            return Allowance(
                f"held: budget {name} (${spent:.2f} of ${budget.per_day:.2f}{likely}) until "
                f"{iso(following)}",
                notice=f"budget {name}@{day}",
            )
        left = budget.per_day - spent
        cap = left if cap is None else min(cap, left)
    return Allowance(cap_usd=cap, fallback=fallback, fallback_reason=why)


def started(
    ledger: MutableMapping[str, Any],
    job: JobSpec,
    allowed: Allowance,
    limits: Limits,
    now: datetime,
) -> None:
    """Note an attempt start for the rates that concern it (pruned to their windows)."""
    if job.agent is None:
        return
    agent = job.agent if allowed.fallback is None else job.agent.fallback[allowed.fallback]
    scopes = dict(_rates(job, agent, limits))
    if not scopes:
        return
    starts = ledger.setdefault("starts", {})
    for scope, rate in scopes.items():
        earliest = iso(now - timedelta(seconds=min(rate.per, MAX_RATE_WINDOW_S))) or ""
        kept = [s for s in starts.get(scope, ()) if s > earliest]
        starts[scope] = [*kept, iso(now)]


def spent(
    ledger: MutableMapping[str, Any],
    job: JobSpec | None,
    finished: Mapping[str, Any],
    limits: Limits,
) -> None:
    """Add a finished attempt's cost (its attempt_finished record) to the day's spend of its
    job, its account and the total; keep it for the job's projection."""
    cost = finished.get("cost_usd")
    if not isinstance(cost, int | float) or cost <= 0:
        return
    facts = finished.get("agent") or {}
    key = str(facts.get("limit_key") or (job.agent.key if job and job.agent else facts.get("kind")))
    day, _ = limits.day(parse(str(finished["finished_at"])))
    spend = ledger.setdefault("spend", {})
    today = spend.setdefault(day, {})
    for scope in (f"job:{finished['job']}", f"account:{key}", "total"):
        today[scope] = round(float(today.get(scope, 0.0)) + float(cost), 6)
    for old in sorted(spend)[:-DAYS_KEPT]:
        del spend[old]
    costs = ledger.setdefault("costs", {})
    costs[finished["job"]] = [*costs.get(finished["job"], ())[-(COSTS_KEPT - 1) :], cost]


def told(ledger: MutableMapping[str, Any], notice: str) -> bool:
    """Whether `notice` was sent already; marks it sent (and forgets other days')."""
    sent = list(ledger.get("told", ()))
    if notice in sent:
        return True
    day = notice.rsplit("@", 1)[-1]
    ledger["told"] = [*(s for s in sent if s.rsplit("@", 1)[-1] >= day), notice]
    return False


def spend_today(ledger: Mapping[str, Any], limits: Limits, now: datetime) -> dict[str, float]:
    """Scope -> USD spent today (the config's day)."""
    day, _ = limits.day(now)
    return dict(ledger.get("spend", {}).get(day, {}))


def _agents(agent: AgentSpec) -> list[AgentSpec]:
    return [agent, *agent.fallback]


def _rates(job: JobSpec, agent: AgentSpec, limits: Limits) -> list[tuple[str, Rate]]:
    rates = []
    if job.rate is not None:
        rates.append((f"job:{job.name}", job.rate))
    if agent.key in limits.rates:
        rates.append((f"account:{agent.key}", limits.rates[agent.key]))
    return rates


def _budgets(job: JobSpec, agent: AgentSpec, limits: Limits) -> list[tuple[str, str, Budget]]:
    budgets = []
    if job.budget is not None:
        budgets.append((f"job {job.name}", f"job:{job.name}", job.budget))
    if agent.key in limits.accounts:
        budgets.append((f"account {agent.key}", f"account:{agent.key}", limits.accounts[agent.key]))
    if limits.budget is not None:
        budgets.append(("total", "total", limits.budget))
    return budgets


def _projected(job: JobSpec, ledger: Mapping[str, Any]) -> float:
    """What the next attempt will likely cost: the p90 of the job's last attempts (never more
    than its per_run cap, which stops it), else its per_run cap, else nothing known (0)."""
    per_run = job.budget.per_run if job.budget else None
    costs = sorted(float(c) for c in ledger.get("costs", {}).get(job.name, ()))
    if not costs:
        return per_run or 0.0
    p90 = costs[min(len(costs) - 1, math.ceil(0.9 * len(costs)) - 1)]
    return p90 if per_run is None else min(p90, per_run)


def _span(seconds: float) -> str:
    from agentjobs.durations import format_duration

    return format_duration(seconds)
