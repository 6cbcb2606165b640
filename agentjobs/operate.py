"""What an operator does to the state besides running ticks: a manual run's enqueue, pause and
resume, a dead letter's replay or resolution. Each is one transaction (or one dead-letter write
and its record) through the engine's store.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from agentjobs import planning
from agentjobs.errors import UserError
from agentjobs.records import new_ulid
from agentjobs.store import DeadLetter, QueueItem

if TYPE_CHECKING:
    from agentjobs.engine import Engine


def enqueue_manual(
    engine: Engine,
    job: str,
    trigger: str = "manual",
    replay_of: str | None = None,
    review: dict[str, Any] | None = None,
) -> QueueItem:
    with engine.store.transaction(engine.lock_timeout) as runtime:
        applied = engine.store.applied()
        if job not in applied:
            known = ", ".join(sorted(applied)) or "none applied"
            raise UserError(
                f"no applied job named {job!r} (jobs: {known}); run `agentjobs apply` first"
            )
        spec = applied[job].parsed
        run_id = new_ulid()
        stamp = engine._now()
        item = QueueItem(
            id=f"{job}@{trigger}-{run_id}",
            run_id=run_id,
            job=job,
            trigger=trigger,
            priority=spec.priority,
            lock_key=planning.lock_key(spec, run_id),
            queued_at=stamp,
            not_before=stamp,
            replay_of=replay_of,
            review=review,
        )
        runtime.queue[item.id] = item
    return item


def set_paused(engine: Engine, job: str, paused: bool) -> str:
    """Pause or resume `job`; says what happened, honestly: "paused", "already paused",
    "resumed", "not paused", or that it stays off because its file says `enabled: false`."""
    from agentjobs.reconcile import fresh_state

    with engine.store.transaction(engine.lock_timeout) as runtime:
        applied = engine.store.applied()
        if job not in applied or job not in runtime.jobs:
            raise UserError(f"no applied job named {job!r}")
        state = runtime.jobs[job]
        enabled = applied[job].parsed.enabled
        if paused:
            if state.paused:
                return "already paused"
            runtime.jobs[job] = dataclasses.replace(state, paused=True)
            return "paused"
        if not state.paused:
            said = "not paused"
        else:
            # Resume from now: the paused period is not "missed".
            fresh = fresh_state(applied[job].parsed, engine.clock.now(), state)
            runtime.jobs[job] = dataclasses.replace(fresh, paused=False)
            said = "resumed"
        if not enabled:
            said += (
                "; it stays off: its file says `enabled: false` (set it to true and "
                "`agentjobs apply`)"
            )
        return said


def release_hold(engine: Engine, key: str, by: str) -> str:
    """Lift account `key`'s usage-limit hold early; the release is kept in the `hold_releases`
    log (who, when, until when it held). Returns until when it would have held."""
    with engine.store.transaction(engine.lock_timeout) as runtime:
        until = runtime.holds.get(key)
        if until is None or until <= engine._now():
            known = ", ".join(sorted(k for k, u in runtime.holds.items() if u > engine._now()))
            raise UserError(
                f"no usage-limit hold on {key!r}"
                + (f"; holds in force: {known}" if known else "; no hold is in force")
            )
        del runtime.holds[key]
    log = engine.store.read_json("hold_releases") or []
    log.append({"key": key, "until": until, "released_at": engine._now(), "by": by})
    engine.store.write_json("hold_releases", log[-200:])
    return until


def replay(engine: Engine, entry_id: str) -> QueueItem:
    entry = dead_letter(engine, entry_id)
    if entry.status == "resolved":
        raise UserError(f"dead letter {entry_id} is resolved; nothing to replay")
    item = enqueue_manual(engine, entry.job, trigger="replay", replay_of=entry_id)
    replays = (*entry.replays, {"run_id": item.run_id, "at": engine._now()})
    engine.store.put_dead_letter(
        dataclasses.replace(entry, replays=replays, status="replayed").to_dict()
    )
    engine.store.append_records(
        [engine._record("replayed", item, engine.store.applied().get(item.job), dlq_id=entry_id)],
        engine.clock.now(),
    )
    return item


def resolve(engine: Engine, entry_id: str, note: str) -> dict[str, Any]:
    """Mark a dead letter handled, with a note; a resolved one is refused (its note stays)."""
    found = dead_letter(engine, entry_id)
    if found.status == "resolved":
        raise UserError(
            f"dead letter {entry_id} is already resolved ({found.resolved_at}: {found.note!r}); "
            "its note stays as it is"
        )
    entry = dataclasses.replace(found, status="resolved", note=note, resolved_at=engine._now())
    engine.store.put_dead_letter(entry.to_dict())
    stub = finished_run(entry.run_id, entry.job, entry.trigger, len(entry.attempts), entry.slot)
    engine.store.append_records(
        [engine._record("resolved", stub, None, dlq_id=entry_id, note=note)], engine.clock.now()
    )
    return entry.to_dict()


def finished_run(
    run_id: str, job: str, trigger: str, attempt: int, slot: str | None = None
) -> QueueItem:
    """A run that is no longer queued, as the item its records (`resolved`, `reviewed`) name."""
    return QueueItem(
        id=run_id,
        run_id=run_id,
        job=job,
        trigger=trigger,
        priority="normal",
        lock_key="",
        queued_at="",
        not_before="",
        slot=slot,
        attempt=attempt,
    )


def dead_letter(engine: Engine, entry_id: str) -> DeadLetter:
    entry = engine.store.dead_letter(entry_id)
    if entry is None:
        raise UserError(f"no dead letter {entry_id!r}; see `agentjobs dlq list`")
    return DeadLetter.from_dict(entry)
