"""`agentjobs watch`: validate and apply the jobs directory whenever it changes.

It watches the directory (not single files, so editors' atomic-rename saves are seen) with
watchfiles, debounced. A valid set is applied (pruned with `--prune`) and the applied plan is
reported; an invalid set is reported and the last good applied state stays as it is.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agentjobs.errors import UserError
from agentjobs.store import Store

if TYPE_CHECKING:
    from loguru import Logger

DEBOUNCE_MS = 300


def apply_once(jobs_dir: Path, store: Store, prune: bool, lock_timeout: float, log: Logger) -> bool:
    """Validate and, if valid, apply. Returns whether the files were valid. Problems are
    logged as errors, what changed as info (`logs.py`)."""
    from agentjobs.gitinfo import head_commit
    from agentjobs.reconcile import Action, apply_plan
    from agentjobs.validate import load_jobs_dir, summary

    log = log.bind(source="watch")
    result = load_jobs_dir(jobs_dir)
    if not result.ok:
        for problem in result.errors:
            log.error(problem.render())
        log.error(f"{summary(result.problems)}; the applied jobs stay as they were")
        return False
    try:
        plan = apply_plan(
            store,
            result.jobs,
            result.config,
            now=datetime.now(UTC),
            prune=prune,
            dry_run=False,
            lock_timeout=lock_timeout,
            git_commit=head_commit(jobs_dir),
        )
    except UserError as exc:
        log.error(f"not applied: {exc}")
        return False
    changed = [c for c in plan.changes if c.action not in (Action.UNCHANGED,)]
    for change in changed:
        log.info(f"{change.action.value}: {change.name}")
    log.info(
        f"applied: {plan.count(Action.CREATE)} created, {plan.count(Action.UPDATE)} updated, "
        f"{plan.count(Action.DELETE)} deleted, {plan.count(Action.UNCHANGED)} unchanged"
    )
    return True


def run(
    jobs_dir: Path,
    store: Store,
    prune: bool,
    stop: threading.Event,
    lock_timeout: float,
    log: Logger,
) -> None:
    """Apply now, then after every change until `stop` is set."""
    from watchfiles import watch

    apply_once(jobs_dir, store, prune, lock_timeout, log)
    for _changes in watch(
        jobs_dir, debounce=DEBOUNCE_MS, stop_event=stop, rust_timeout=500, yield_on_timeout=False
    ):
        if stop.is_set():
            break
        apply_once(jobs_dir, store, prune, lock_timeout, log)
