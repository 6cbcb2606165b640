"""Orphans: attempts recorded as running that nobody is left to finish (their supervisor was
killed, the machine restarted). Each is settled as its records say: as recorded, when its
`attempt_finished` was written; else as `lost` (and retried by its policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agentjobs import settle
from agentjobs.clock import iso
from agentjobs.store import AppliedJob, QueueItem, Runtime

if TYPE_CHECKING:
    from agentjobs.engine import Engine

ORPHAN_REASON = "the runner stopped before the attempt finished (killed or machine restarted)"


def orphans(engine: Engine) -> dict[str, tuple[QueueItem, dict[str, Any] | None]]:
    """The orphans in a snapshot of the runtime, each with its `attempt_finished` record if
    one was written, all looked up in one pass from where the records ended at their claims
    (issue 10, item 7): no state lock is held, and the cost does not grow with history.
    A key is found free before the records are read: a supervisor appends the finish before
    it lets go of the key, so a finish written at all is found."""
    snapshot = engine.store.runtime()
    running = [i for i in snapshot.queue.values() if i.state == "running"]
    orphans = [item for item in running if engine.store.orphaned(item)]
    if not orphans:
        return {}
    # what settling them imports (the retry policy's backoff, the next `every` slot),
    # imported before the state lock is taken: ~0.1 s that would hold it otherwise
    import tenacity  # noqa: F401

    import agentjobs.retry
    import agentjobs.schedule
    import agentjobs.spec  # noqa: F401

    finished = engine.store.finished_records(orphans, engine.clock.now())
    return {i.id: (i, finished.get((i.run_id, i.attempt))) for i in orphans}


def recover(
    engine: Engine,
    runtime: Runtime,
    applied: Mapping[str, AppliedJob],
    now: datetime,
    records: list[dict[str, Any]],
    orphans: Mapping[str, tuple[QueueItem, dict[str, Any] | None]],
) -> int:
    """Settle the orphans `orphans()` found that still are (inside the transaction: the
    same attempt still running, its key still free). One that became an orphan since is
    left to the next tick."""
    count = 0
    for item_id, (seen, recorded) in orphans.items():
        item = runtime.queue.get(item_id)
        if item is None or not settle.still_ours(item, seen) or not engine.store.orphaned(item):
            continue  # settled meanwhile (its supervisor, another tick)
        count += 1
        if recorded is not None:
            # The attempt finished and was recorded; nobody settled it (its supervisor
            # was killed in between). Settle it as recorded: never run it again, never
            # call it lost.
            engine._settle(runtime, item, applied.get(item.job), recorded)
            continue
        engine._tell(
            f"{item.job}: run {item.run_id} attempt {item.attempt} was lost: {ORPHAN_REASON}"
        )
        ended = engine._decide(
            item,
            applied.get(item.job),
            now,
            outcome="lost",
            exit_code=None,
            signal=None,
            error=ORPHAN_REASON,
            output="",
            started_at=item.started_at or iso(now) or "",
            duration_s=None,
            log_path=str(engine.store.log_path(item.run_id, item.attempt)),
        )
        records.extend(ended)
        engine._settle(runtime, item, applied.get(item.job), ended[0])
    return count
