"""Whether a queued item may be claimed now: the one rule set every backend's claim applies.

A refusal starting with "host:" is about this host only (labels it lacks, a workdir it does not
have): on a shared store another host may run the item, and `status` shows the note.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from agentjobs import limits
from agentjobs.limits import Allowance
from agentjobs.store import AppliedJob, ClaimRequest, JobState, QueueItem

_ORDER = operator.attrgetter("order")


def in_order(items: list[QueueItem]) -> Iterator[QueueItem]:
    """Items by priority, then age (`QueueItem.order`). Usually the first one can run, so it is
    found with `min` and the rest are sorted only when it cannot."""
    if not items:
        return
    first = min(items, key=_ORDER)
    yield first
    yield from sorted((i for i in items if i is not first), key=_ORDER)


def refusal(
    job: AppliedJob | None,
    state: JobState | None,
    holds: Mapping[str, str],
    request: ClaimRequest,
    *,
    other_hosts: bool,
    ledger: MutableMapping[str, Any] | None = None,
) -> Allowance:
    """Whether `request`'s host may run an item of `job` now: an `Allowance` whose `reason`
    says why not (None: it may, with the agent and the spending cap it names).

    A manual run (`request.only`: a person asked for it) ignores `enabled`, pauses, usage
    holds and rates, but never this host's labels nor a budget (money is a hard cap). With
    `other_hosts` (a shared store) a workdir missing here is a reason too: another host may
    have it. Usage holds, rates, budgets and fallback agents: `limits.allowance`, from the
    `ledger`. A budget hold's first refusal of the day marks its notice in the ledger and
    adds it to `request.notices` (one `budget_exceeded` event)."""
    if job is None:
        return Allowance("its job is no longer applied")
    spec = job.parsed
    if request.only is None:
        if not spec.enabled:
            return Allowance(f"job {job.name} is disabled")
        if state is not None and state.paused:
            return Allowance(f"job {job.name} is paused")
    wanted = spec.runs_on
    missing = [label for label in wanted if label not in request.labels]
    if missing:
        return Allowance(
            f"host: host {request.host} lacks the label(s) {', '.join(missing)} (runs_on)"
        )
    workdir = spec.workdir
    if other_hosts and workdir and not os.path.isdir(workdir):
        return Allowance(f"host: workdir {workdir} does not exist on host {request.host}")
    if spec.agent is None:
        return _GO
    if not (holds or ledger) and not request.limits.applies_to(spec) and not spec.agent.fallback:
        return _GO
    allowed = limits.allowance(
        spec, holds, ledger or {}, request.limits, request.moment, manual=request.only is not None
    )
    notice = allowed.notice
    if notice is not None and ledger is not None and not limits.told(ledger, notice):
        request.notices.append((job.name, allowed.reason or ""))
    return allowed


_GO = Allowance()


def claimed(
    item: QueueItem,
    job: AppliedJob,
    allowed: Allowance,
    request: ClaimRequest,
    ledger: MutableMapping[str, Any],
) -> dict[str, Any]:
    """What a claim allowed by `allowed` changes on the item (its agent and cap), after noting
    the start in `ledger` for the rates that concern it."""
    if (
        allowed.fallback is None
        and allowed.cap_usd is None
        and not request.limits.rates
        and (job.parsed.rate is None)
    ):
        return {}
    limits.started(ledger, job.parsed, allowed, request.limits, request.moment)
    return {
        "cap_usd": allowed.cap_usd,
        "fallback": allowed.fallback,
        "fallback_reason": allowed.fallback_reason,
    }


def needs_ledger(request: ClaimRequest, jobs: Mapping[str, AppliedJob]) -> bool:
    """Whether a claim judges a budget or a rate (and so reads, locks and writes the ledger)."""
    configured = request.limits
    if configured.budget or configured.accounts or configured.rates:
        return True
    return any(job.parsed.budget or job.parsed.rate for job in jobs.values())
