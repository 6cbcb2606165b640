"""What agent attempts cost, as the views show it (issue 12, part 2): `history`, `stats`,
`metrics`, the dead letters and `status` read cost through this module, never on their own.

An attempt's cost is the `cost_usd` of its `attempt_finished` record (USD; `cost_estimated`
when it was priced from tokens, `pricing.py`), or of its agent facts in a queued item's or a
dead letter's attempt summaries; its turns and its account (limit key) are in the agent facts.
An attempt without a cost (a plain command, an agent whose model has no price) counts as
nothing, never as $0 spent knowingly: views show `-`. Today's spend against the caps comes from
the ledger (`limits.py`), and why a job's queued items wait on a budget or a rate from the one
eligibility rule (`store/eligibility.py`); nothing here does budget arithmetic of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentjobs.store import AppliedJob, Runtime


@dataclass(frozen=True, slots=True)
class Cost:
    """An amount in USD, and whether any part of it was estimated from tokens."""

    usd: float
    estimated: bool = False

    def __add__(self, other: Cost) -> Cost:
        return Cost(round(self.usd + other.usd, 6), self.estimated or other.estimated)

    def text(self, places: int = 4) -> str:
        """`$0.1234`, or `~$0.1234` when estimated."""
        return f"{'~' if self.estimated else ''}${self.usd:.{places}f}"


def text(cost: Cost | None, places: int = 4) -> str:
    """A cost as views print it: `$0.1234`, `~$0.1234` when estimated, `-` when unknown."""
    return "-" if cost is None else cost.text(places)


def _facts(record: Mapping[str, Any]) -> Mapping[str, Any]:
    facts = record.get("agent")
    return facts if isinstance(facts, Mapping) else {}


def _usd(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def attempt_cost(record: Mapping[str, Any]) -> Cost | None:
    """The cost of one attempt: an `attempt_finished` record's `cost_usd`, else (an attempt
    summary of a queued item or a dead letter) its agent facts' `cost_usd`; None if unknown."""
    for source in (record, _facts(record)):
        usd = _usd(source.get("cost_usd"))
        if usd is not None:
            return Cost(usd, bool(source.get("cost_estimated")))
    return None


def attempt_turns(record: Mapping[str, Any]) -> int | None:
    """The agent's turns in one attempt (`agent.turns`, claude's `num_turns`), if it said."""
    facts = _facts(record)
    for name in ("turns", "num_turns"):
        turns = facts.get(name)
        if isinstance(turns, int) and not isinstance(turns, bool):
            return turns
    return None


def attempt_agent(record: Mapping[str, Any]) -> str | None:
    """The agent kind that ran the attempt (a fallback's when one ran), if an agent did."""
    kind = _facts(record).get("kind")
    return str(kind) if kind else None


def attempt_account(record: Mapping[str, Any]) -> str | None:
    """The account (limit key) the attempt spent on: its agent's `limit_key`, else its kind."""
    facts = _facts(record)
    key = facts.get("limit_key") or facts.get("kind")
    return str(key) if key else None


def total(costs: Iterable[Cost | None]) -> Cost | None:
    """The sum of the known costs; None when none is known."""
    known = [c for c in costs if c is not None]
    if not known:
        return None
    result = known[0]
    for cost in known[1:]:
        result = result + cost
    return result


def run_cost(attempts: Iterable[Mapping[str, Any]]) -> Cost | None:
    """What a run cost: the sum of its attempts' costs (records or attempt summaries)."""
    return total(attempt_cost(a) for a in attempts)


def as_fields(cost: Cost | None) -> dict[str, Any]:
    """`cost_usd` (None when unknown) and `cost_estimated`, as JSON output carries them."""
    return {
        "cost_usd": None if cost is None else cost.usd,
        "cost_estimated": cost is not None and cost.estimated,
    }


@dataclass(slots=True)
class Tally:
    """Runs, attempts and cost of some finished attempts (a job's, a day's, an account's)."""

    attempts: int = 0
    runs: set[str] = field(default_factory=set)
    cost: Cost | None = None

    def add(self, record: Mapping[str, Any]) -> None:
        self.attempts += 1
        self.runs.add(str(record.get("run_id", "")))
        self.cost = total((self.cost, attempt_cost(record)))

    def to_dict(self) -> dict[str, Any]:
        return {"runs": len(self.runs), "attempts": self.attempts, **as_fields(self.cost)}


# -- today's spend against the caps ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spend:
    """One scope's spend today: `scope` is `total`, `account:KEY` or `job:NAME` (the ledger's
    names); `cap` its per-day budget, if it has one."""

    scope: str
    usd: float
    cap: float | None


@dataclass(frozen=True, slots=True)
class SpendToday:
    """Today's spend (the config's time zone, as budgets count days) by scope, with caps."""

    day: str
    timezone: str
    scopes: tuple[Spend, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "timezone": self.timezone,
            "spend": {s.scope: s.usd for s in self.scopes},
            "caps": {s.scope: s.cap for s in self.scopes if s.cap is not None},
        }


def limits_configured(config: Mapping[str, Any], applied: Mapping[str, AppliedJob]) -> bool:
    """Whether any budget or rate is configured, read from the stored dicts (no spec is
    parsed: the usual `status`, without limits, pays nothing for them)."""
    if config.get("budget") or config.get("accounts") or config.get("rates"):
        return True
    return any(job.spec.get("budget") or job.spec.get("rate") for job in applied.values())


def spend_today(
    config: Mapping[str, Any],
    applied: Mapping[str, AppliedJob],
    ledger: Mapping[str, Any],
    now: datetime,
) -> SpendToday | None:
    """Today's spend per scope (`limits.spend_today`) beside each per-day cap (the config's
    overall and account budgets, each job's `budget.per_day`); None when no budget is
    configured and nothing was spent today. Order: total, accounts, jobs."""
    from agentjobs import limits as caps_and_rates

    limits = caps_and_rates.Limits.from_config(config)
    caps: dict[str, float] = {}
    if limits.budget is not None and limits.budget.per_day is not None:
        caps["total"] = limits.budget.per_day
    for key, budget in limits.accounts.items():
        if budget.per_day is not None:
            caps[f"account:{key}"] = budget.per_day
    for name, job in applied.items():
        own = job.parsed.budget if job.spec.get("budget") else None
        per_day = own.per_day if own is not None else None
        if per_day is not None:
            caps[f"job:{name}"] = per_day
    spent = {k: float(v) for k, v in caps_and_rates.spend_today(ledger, limits, now).items() if v}
    if not caps and not spent:
        return None
    day, _ = limits.day(now)
    rank = {"total": 0, "account": 1, "job": 2}
    scopes = sorted(set(caps) | set(spent), key=lambda s: (rank.get(s.split(":")[0], 3), s))
    rows = tuple(Spend(s, round(spent.get(s, 0.0), 6), caps.get(s)) for s in scopes)
    return SpendToday(day, limits.timezone, rows)


def limit_waits(
    applied: Mapping[str, AppliedJob],
    runtime: Runtime,
    config: Mapping[str, Any],
    now: datetime,
) -> dict[str, str]:
    """Job -> why its due queued items wait on a budget or a rate now, as the claim would say
    it (`eligibility.refusal`, asked with a request built as the engine builds it, on a copy of
    the ledger: asking changes nothing). Usage holds are not here (`status` shows them from
    `Runtime.holds`), nor pauses or a host's labels (asked as a host that has them: the host
    is named only in reasons about labels)."""
    import os

    from agentjobs.clock import iso
    from agentjobs.limits import Limits
    from agentjobs.store import ClaimRequest
    from agentjobs.store.eligibility import refusal

    stamp = iso(now) or ""
    limits = Limits.from_config(config)
    ledger = copy.deepcopy(runtime.ledger)  # a refusal marks notices sent in the ledger
    waits: dict[str, str] = {}
    due = sorted(
        (i for i in runtime.queue.values() if i.state == "queued" and i.not_before <= stamp),
        key=lambda i: i.order,
    )
    for item in due:
        job = applied.get(item.job)
        if item.job in waits or job is None:
            continue
        request = ClaimRequest(
            host="status",
            labels=frozenset(job.parsed.runs_on),
            now=stamp,
            slots=1,
            host_slots=None,
            timeout=0.0,
            pid=os.getpid(),
            limits=limits,
        )
        reason = refusal(
            job,
            runtime.jobs.get(item.job),
            runtime.holds,
            request,
            other_hosts=False,
            ledger=ledger,
        ).reason
        if reason is not None and reason.startswith(("held: budget ", "held: rate ")):
            waits[item.job] = reason
    return waits
