"""What agent attempts cost, added up as the views show it (issue 12, part 2): `stats` (by
day, job and account), `metrics` (by job and agent), the dead letters (by run) and `status`
(today's spend) read cost through this module or the query layer it asks, never on their own.

An attempt's cost is the `cost_usd` of its `attempt_finished` record (USD; `cost_estimated`
when it was priced from tokens, `pricing.py`), or of its agent facts in a queued item's or a
dead letter's attempt summaries; its turns and its account (limit key) are in the agent facts.
An attempt without a cost (a plain command, an agent whose model has no price) counts as
nothing, never as $0 spent knowingly: views show `-`. Today's spend against the caps comes from
the query layer (`query.ledger`): nothing here does budget arithmetic of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentjobs.store import AppliedJob, Store


@dataclass(frozen=True, slots=True)
class Cost:
    """An amount in USD, and whether any part of it was estimated from tokens."""

    usd: float
    estimated: bool = False

    def __add__(self, other: Cost) -> Cost:
        return Cost(round(self.usd + other.usd, 6), self.estimated or other.estimated)


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


def limits_configured(config: Mapping[str, Any], applied: Mapping[str, AppliedJob]) -> bool:
    """Whether any budget or rate is configured, read from the stored dicts (no spec is
    parsed): without one and with nothing spent, `status` does not ask for the ledger."""
    if config.get("budget") or config.get("accounts") or config.get("rates"):
        return True
    return any(job.spec.get("budget") or job.spec.get("rate") for job in applied.values())


def ledger_view(store: Store, now: datetime) -> dict[str, Any] | None:
    """Today's spend against the caps as `status` and `stats` show it: the query layer's
    `ledger` (`query.py`) with the time zone its day is in, `{"day", "timezone", "spend":
    {scope: usd}, "caps": {scope: usd}}` (scopes `total`, `account:KEY`, `job:NAME`); None when
    no per-day cap is configured and nothing was spent today."""
    from agentjobs import query
    from agentjobs.limits import Limits

    ledger = query.ledger(store, now)
    spend = {scope: usd for scope, usd in ledger.spend.items() if usd}
    if not ledger.caps and not spend:
        return None
    return {
        "day": ledger.day,
        "timezone": Limits.from_config(store.config()).timezone,
        "spend": spend,
        "caps": dict(ledger.caps),
    }
