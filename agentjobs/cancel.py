"""Cancelling a run (`agentjobs cancel RUN`, Ctrl-C on `agentjobs run`): a person's decision, so
the run ends there: never retried, never dead-lettered.

A queued run is removed at once, with a `cancelled` record. A running attempt is cancelled
through the state, whichever host runs it: the cancel (who, when, why) is written on its running
queue item, and the attempt's own supervisor looks for it every `POLL_S` seconds (`Watch`, one
cheap read: a stat of runtime.json on a state directory, one row on PostgreSQL). Seeing it, the
supervisor stops the attempt through the runner's one stop path (TERM to the whole process
group, kill_grace, KILL; as a subreaper, whatever left the group too) and records the attempt
with outcome `cancelled`, `by` and `cancelled_at`. Should the attempt end by itself before its
supervisor looks, the settle step finds the cancel on the item and ends the run instead of
retrying it (`settle.settle`), recording the retry that will not run as `cancelled`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentjobs.errors import UserError
from agentjobs.store import CancelRequest, QueueItem, QueueState, Store

if TYPE_CHECKING:
    from agentjobs.engine import Engine
    from agentjobs.runrecords import AttemptFinished

POLL_S = 1.0  # how often a supervisor looks for a cancel of its attempt
SETTLE_MARGIN_S = 15.0  # waiting for a cancelled attempt: its kill_grace, a look, and this


@dataclass(frozen=True, slots=True)
class CancelSwitch:
    """A cancel of whatever an engine runs in the foreground (`agentjobs run`), armed by a
    signal handler or a prompt (`event.set()`); the engine then cancels its run as `by`, for
    `reason` (recorded in the state, from the engine's main loop: never in a handler)."""

    by: str
    reason: str
    event: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What a cancel did. `was`: `queued` (removed now, recorded `cancelled`), `running` (its
    supervisor stops it) or `over` (cancelled before: `already`). `by`, `at`, `reason`: the
    cancel that holds (an earlier one's when `already`)."""

    run_id: str
    job: str
    attempt: int
    was: str
    by: str
    at: str
    reason: str
    already: bool = False
    host: str | None = None  # where a running attempt runs
    kill_grace: float | None = None  # what its supervisor waits between TERM and KILL
    item: QueueItem | None = field(default=None, compare=False)  # the running item

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del data["item"]
        return data


def cancel(engine: Engine, text: str, by: str, reason: str) -> Cancellation:
    """Cancel the run that `text` names (a whole run id or a unique prefix, among the runs in
    the queue and in the records). A second cancel of a run says so (`already`); a run that
    is over, unknown or ambiguous is a `UserError` (one line)."""
    from agentjobs.query import resolve_run

    return cancel_run(engine, resolve_run(engine.store, text), by, reason)


def cancel_run(engine: Engine, run_id: str, by: str, reason: str) -> Cancellation:
    """Cancel run `run_id` (one transaction): a queued item is removed and recorded
    `cancelled`; a running one gets the cancel for its supervisor to act on."""
    from agentjobs.settle import job_state_after

    store = engine.store
    with store.transaction(engine.lock_timeout) as runtime:
        item = next((i for i in runtime.queue.values() if i.run_id == run_id), None)
        if item is None:
            done = None
        elif item.state == QueueState.QUEUED:
            now = engine.clock.now()
            stamp = engine._now()
            applied = store.applied().get(item.job)
            store.append_records(
                [engine._record("cancelled", item, applied, by=by, reason=reason)], now
            )
            del runtime.queue[item.id]
            state = job_state_after(
                runtime.jobs.get(item.job), applied, item, "cancelled", stamp, "done"
            )
            if state is not None:
                runtime.jobs[item.job] = state
            done = Cancellation(run_id, item.job, item.attempt, "queued", by, stamp, reason)
        else:
            applied = store.applied().get(item.job)
            earlier = item.cancel
            already = earlier is not None
            if earlier is None:
                earlier = CancelRequest(by, engine._now(), reason)
                runtime.queue[item.id] = dataclasses.replace(
                    item, cancel_by=earlier.by, cancel_at=earlier.at, cancel_reason=earlier.reason
                )
            done = Cancellation(
                run_id,
                item.job,
                item.attempt,
                "running",
                earlier.by,
                earlier.at,
                earlier.reason,
                already=already,
                host=item.host,
                kill_grace=applied.parsed.kill_grace if applied is not None else None,
                item=item,
            )
    if done is not None:
        return done
    return _over(store, run_id)


def _over(store: Store, run_id: str) -> Cancellation:
    """A run no longer queued or running: cancelled before (`already`), else a `UserError`
    saying how it ended."""
    from agentjobs.query import describe_end, run_ends

    end = run_ends(store, run_id).get(run_id)
    if end is None:
        raise UserError(f"run {run_id} is not queued or running; nothing to cancel")
    if end.get("outcome") == "cancelled":
        when = end.get("cancelled_at") or end.get("time") or ""
        return Cancellation(
            run_id,
            str(end.get("job")),
            int(end.get("attempt") or 0),
            "over",
            str(end.get("by") or "?"),
            str(when),
            str((end.get("reason") if end.get("event") == "cancelled" else end.get("error")) or ""),
            already=True,
        )
    raise UserError(f"run {run_id} is over: {describe_end(end)}; nothing to cancel")


def wait_settled(
    store: Store, cancelled: Cancellation, timeout: float | None = None
) -> tuple[bool, AttemptFinished | None]:
    """Wait until a cancelled running attempt is settled: (True, its `attempt_finished`
    record, or None when none is found), or (False, None) while it still runs after `timeout`
    seconds (default: its kill_grace, a look, and a margin; its supervisor may be on a host
    that is down, and the run is then recorded once its lease runs out)."""
    from agentjobs.clock import Clock
    from agentjobs.runrecords import AttemptFinished, decode

    item = cancelled.item
    assert item is not None, "only a running attempt is waited for"
    if timeout is None:
        timeout = POLL_S + (cancelled.kill_grace or 0.0) + SETTLE_MARGIN_S
    deadline = time.monotonic() + timeout
    while True:
        current = store.queue_item(item.id)
        if current is None or current.run_id != item.run_id or current.attempt != item.attempt:
            found = store.finished_records([item], Clock().now()).get((item.run_id, item.attempt))
            try:
                record = decode(found) if found is not None else None
            except ValueError:  # not a record this agentjobs wrote
                record = None
            return True, record if isinstance(record, AttemptFinished) else None
        if time.monotonic() >= deadline:
            return False, None
        time.sleep(0.1)


class Watch:
    """A running attempt's look-out for a cancel, in its supervisor: a thread reads the
    attempt's queue item every `every` seconds. A `StopFlag` (`is_set()` once a cancel is
    there), so the runner stops the attempt as it stops it for a shutdown; `request` then says
    who cancelled it. A state that cannot be read (a database restart) is looked at again at
    the next turn: it never stops the attempt."""

    def __init__(self, store: Store, item: QueueItem, every: float = POLL_S) -> None:
        self.store, self.item, self.every = store, item, every
        self.request: CancelRequest | None = None
        self._seen = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Look no more (the attempt ended). A look under way is not waited for long."""
        self._done.set()
        if self._thread.ident is not None:  # started (supervised._Later starts it late)
            self._thread.join(1.0)

    def is_set(self) -> bool:
        return self._seen.is_set()

    def why(self) -> str:
        request = self.request
        return f"cancelled by {request.by}: {request.reason}" if request else ""

    def _run(self) -> None:
        try:
            while not self._done.wait(self.every):
                if self._look():
                    return
        finally:
            self.store.close_thread()  # this thread's connection, on a database

    def _look(self) -> bool:
        try:
            current = self.store.queue_item(self.item.id)
        except UserError:  # the state is away for now: look again next time
            return False
        if current is None or current.run_id != self.item.run_id:
            return False
        if current.attempt != self.item.attempt or current.cancel is None:
            return False
        self.request = current.cancel
        self._seen.set()
        return True
