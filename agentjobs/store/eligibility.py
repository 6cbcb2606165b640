"""Whether a queued item may be claimed now: the one rule set every backend's claim applies.

A refusal starting with "host:" is about this host only (labels it lacks, a workdir it does not
have): on a shared store another host may run the item, and `status` shows the note.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Mapping

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
) -> str | None:
    """Why `request`'s host will not run an item of `job` now, or None.

    A manual run (`request.only`: a person asked for it) ignores `enabled`, pauses and usage
    holds, but never this host's labels. With `other_hosts` (a shared store) a workdir missing
    here is a reason too: another host may have it."""
    if job is None:
        return "its job is no longer applied"
    if request.only is None:
        if not job.parsed.enabled:
            return f"job {job.name} is disabled"
        if state is not None and state.paused:
            return f"job {job.name} is paused"
        limit = job.limit_key
        if limit is not None and holds.get(limit, "") > request.now:
            return f"held: {limit} usage limit until {holds[limit]}"
    wanted = job.parsed.runs_on
    missing = [label for label in wanted if label not in request.labels]
    if missing:
        return f"host: host {request.host} lacks the label(s) {', '.join(missing)} (runs_on)"
    workdir = job.parsed.workdir
    if other_hosts and workdir and not os.path.isdir(workdir):
        return f"host: workdir {workdir} does not exist on host {request.host}"
    return None
