"""The review inbox: runs whose branch waits for a person (issue 15).

A job with `land: {mode: review}` ends a successful run `awaiting_review` (a `land: merge` run
whose merge conflicts does too); settling it puts a `Review` in the store's inbox. A person
then decides, once: `approve` lands the branch as `land: merge` would (under the workdir's lock
key), `reject` keeps the branch for reference, `retry` queues a new run whose prompt (or, for a
command, `AGENTJOBS_GUIDANCE`) carries the reviewer's guidance, note and what the run changed.
Every decision is a `reviewed` record saying who (git's user.name and user.email, else $USER),
when and what; nothing lands in review mode without one.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentjobs import landing
from agentjobs.errors import UserError
from agentjobs.store import QueueItem, Review

if TYPE_CHECKING:
    from agentjobs.engine import Engine
    from agentjobs.store import Store

DECISIONS = ("approve", "reject", "retry")
RECORDED = ("note", "guidance", "landed", "into", "retry_run")  # a decision's record fields
LAND_LEASE_S = 600.0  # a landing's hold on the workdir's key on a shared store, at most


def who(workdir: str | None = None) -> str:
    """Who decides: git's user.name <user.email> (the workdir's config, else the global one),
    else $USER."""
    from agentjobs.runner import capture

    where = workdir if workdir and os.path.isdir(workdir) else os.getcwd()
    name = capture(["git", "config", "user.name"], cwd=where)[1].strip()
    email = capture(["git", "config", "user.email"], cwd=where)[1].strip()
    if name:
        return f"{name} <{email}>" if email else name
    return login_name()


def login_name() -> str:
    """$USER, else the login name, else the uid."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def inbox(store: Store, everything: bool = False) -> list[Review]:
    """The runs awaiting a decision, oldest first (`everything`: decided ones too)."""
    entries = [Review.from_dict(e) for e in store.reviews()]
    if not everything:
        entries = [e for e in entries if e.status == "pending"]
    return sorted(entries, key=lambda e: e.created_at)


def entry(store: Store, text: str) -> Review:
    """The inbox entry `text` names (a run id or a unique prefix)."""
    from agentjobs.query import resolve_review

    found = store.review(resolve_review(store, text))
    assert found is not None
    return Review.from_dict(found)


@dataclass(frozen=True, slots=True)
class ReviewDetail:
    """What `review show` and the dashboard's diff view show."""

    review: Review
    diff: str
    final_message: str | None
    verify: str | None
    log_path: str | None


def show(store: Store, text: str) -> ReviewDetail:
    from agentjobs.query import attempt_log
    from agentjobs.transcript import final_message

    found = entry(store, text)
    diff = ""
    if found.base and found.commit and os.path.isdir(found.workdir):
        diff = landing.diff(found.workdir, found.base, found.commit)
    log = attempt_log(store, found.run_id, found.attempt)
    return ReviewDetail(
        found,
        diff,
        final_message(log.text) if log.exists else None,
        log.verify,
        log.path if log.exists else found.log_path,
    )


def _pending(store: Store, text: str) -> Review:
    found = entry(store, text)
    if found.status != "pending":
        decided = found.decision or {}
        raise UserError(
            f"run {found.run_id} was already decided: {found.status} by {decided.get('by')} at "
            f"{decided.get('at')}; a decision is made once"
        )
    return found


def approve(engine: Engine, text: str, by: str) -> Review:
    """Land the run's branch into `into` (its strategy) under the workdir's lock key, then
    record the decision. A conflict, or a key held by a running agent, changes nothing."""
    found = _pending(engine.store, text)
    if not found.commit or not found.base:
        raise UserError(f"run {found.run_id} has no commit to land; reject it or retry it")
    if not found.into:
        raise UserError(f"run {found.run_id} has no branch to land into; set `land.into`")
    applied = engine.store.applied().get(found.job)
    key = applied.parsed.lock if applied is not None else found.workdir
    release = engine.store.hold_key(key, f"review approve of run {found.run_id}", LAND_LEASE_S)
    if release is None:
        raise UserError(
            f"lock key {key} is held (an agent works in {found.workdir}); approve again when "
            "it is done"
        )
    try:
        landed = landing.land(
            found.workdir,
            (engine.store.local_dir / "worktrees").absolute(),
            run_id=found.run_id,
            base=found.base,
            commit=found.commit,
            into=found.into,
            strategy=found.strategy,
            message=landing.message(found.job, found.run_id, _land_facts(found), by),
        )
    finally:
        release()
    if landed.conflict is not None:
        raise UserError(
            f"run {found.run_id} does not land on {found.into}: {landed.conflict}; resolve it "
            f"by hand, or `agentjobs review retry {found.run_id} --guidance ...`"
        )
    return _decide(
        engine,
        found,
        "approve",
        by,
        landed=landed.commit,
        already=landed.already or None,
        into=found.into,
        strategy=found.strategy,
    )


def reject(engine: Engine, text: str, by: str, note: str) -> Review:
    """Record that the run's work does not land; its branch stays for reference."""
    return _decide(engine, _pending(engine.store, text), "reject", by, note=note)


def retry(
    engine: Engine, text: str, by: str, guidance: str, note: str | None = None
) -> tuple[Review, QueueItem]:
    """Queue a new run of the job that carries the reviewer's guidance, their note and what
    the reviewed run changed; the reviewed run is decided `retry`."""
    from agentjobs.operate import enqueue_manual

    found = _pending(engine.store, text)
    if not guidance.strip():
        raise UserError("--guidance is empty: say what the next run should do differently")
    asked = {
        "of": found.run_id,
        "guidance": guidance,
        "note": note,
        "by": by,
        "branch": found.branch,
        "diffstat": found.diffstat,
        "conflict": found.conflict,
    }
    item = enqueue_manual(engine, found.job, trigger="review", review=asked)
    decided = _decide(
        engine, found, "retry", by, note=note, guidance=guidance, retry_run=item.run_id
    )
    return decided, item


def _decide(engine: Engine, found: Review, action: str, by: str, **facts: Any) -> Review:
    """Write the decision on the entry and as a `reviewed` record."""
    status = {"approve": "approved", "reject": "rejected", "retry": "retried"}[action]
    shown = {key: value for key, value in facts.items() if value is not None}
    decision = {"action": action, "by": by, "at": engine._now(), **shown}
    decided = dataclasses.replace(found, status=status, decision=decision)
    engine.store.put_review(decided.to_dict())
    from agentjobs.operate import finished_run

    stub = finished_run(found.run_id, found.job, "review", found.attempt)
    record = engine._record(
        "reviewed",
        stub,
        engine.store.applied().get(found.job),
        decision=action,
        by=by,
        **{k: v for k, v in shown.items() if k in RECORDED},
    )
    engine.store.append_records([record], engine.clock.now())
    return decided


def _land_facts(found: Review) -> dict[str, Any]:
    return {
        "branch": found.branch,
        "base": found.base,
        "commit": found.commit,
        "strategy": found.strategy,
    }


def diff_summary(diffstat: str | None) -> str:
    """The summary line of `git diff --stat` ("3 files changed, 10 insertions(+)")."""
    lines = (diffstat or "").strip().splitlines()
    return lines[-1].strip() if lines else "-"


def guidance_section(review: Mapping[str, Any]) -> str:
    """What a `review retry` run's prompt adds: the reviewer's guidance and note, and what the
    reviewed run changed, so the agent does something different."""
    lines = [
        "",
        "",
        "## A reviewer sent back the previous run of this task",
        f"The previous run ({review.get('of')}, branch {review.get('branch')}) was not "
        f"accepted by {review.get('by')}. Do not repeat it; start again from the current code "
        "and follow the reviewer's guidance.",
    ]
    if review.get("diffstat"):
        lines += ["", "What the previous run changed (git diff --stat):", str(review["diffstat"])]
    if review.get("conflict"):
        lines += ["", f"Its merge conflicted: {review['conflict']}"]
    if review.get("note"):
        lines += ["", f"Reviewer's note: {review['note']}"]
    lines += ["", f"Reviewer's guidance: {review.get('guidance')}"]
    return "\n".join(lines) + "\n"
