"""`agentjobs daemon`: ticks in a loop for people who prefer a service to a crontab line.

Each pass makes the decisions a `tick` makes from the same state (`Engine.daemon_pass`: recover,
enqueue what is due or skip it with a recorded reason), so cron ticks alongside a daemon stay safe
(all coordination is in the locks and the state) and `overlap` means the same under both. Unlike a
tick, a pass does not wait for the attempts it starts: they run on worker threads (each waiting on
its attempt's supervisor) while the loop keeps passing on time - a slot due while its job's
previous run is still in flight is skipped (or queued) at its time, not run late (issue 10 item
12). Between passes it sleeps until the next due slot, retry or usage-limit reset - not a fixed
poll - and wakes at once when `apply` changes the applied jobs or an attempt ends (a slot is
free). One daemon per state directory (a lock). SIGTERM/SIGINT: stop claiming, stop running
attempts gracefully (their workers forward the stop to the supervisors), wait for them, exit.
Its log lines, and those of its passes, go through `logs.py` (loguru): each starts with the UTC
time it was said, as text or a JSON object (`--log-format`), since a daemon's log is read long
after, often not through journald.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agentjobs import locks
from agentjobs.clock import iso, parse
from agentjobs.errors import UserError
from agentjobs.store import Runtime, Store

if TYPE_CHECKING:
    from loguru import Logger

    from agentjobs.engine import Engine


class Workers:
    """A daemon's worker threads, kept across its passes (each pass has its own engine): how
    many run, a count of attempt ends (each may free a slot or queue a retry: the daemon's
    loop passes again), and the first failure a worker hit (raised by the next pass, as a tick
    raises its workers' failure)."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._failures: list[UserError] = []
        self._guard = threading.Lock()
        self._running = 0
        self._ended = 0

    def start(self, target: Callable[[Workers], None]) -> None:
        self._threads = [w for w in self._threads if w.is_alive()]
        with self._guard:
            self._running += 1
        worker = threading.Thread(target=target, args=(self,), daemon=True)
        worker.start()
        self._threads.append(worker)
        time.sleep(0.005)  # let this worker claim before the next one looks

    def running(self) -> int:
        with self._guard:
            return self._running

    def ended(self) -> int:
        with self._guard:
            return self._ended

    def attempt_ended(self) -> None:
        with self._guard:
            self._ended += 1

    def done(self, failures: list[UserError], worked: bool) -> None:
        """A worker is done (nothing more to claim); one that ran attempts freed its slot."""
        with self._guard:
            self._failures.extend(failures)
            self._running -= 1
            self._ended += 1 if worked else 0

    def raise_failure(self) -> None:
        with self._guard:
            if self._failures:
                raise self._failures.pop(0)

    def join(self) -> None:
        """Wait for every worker (after a stop: their attempts are being interrupted)."""
        for worker in self._threads:
            while worker.is_alive():
                worker.join(0.1)  # short joins keep the main thread free for signals
        self._threads = []


MAX_SLEEP = 30.0  # seconds; also how often a held lock or a paused job is looked at again
WAKE_CHECK = 0.05  # seconds between checks for an apply while sleeping


def next_wake(runtime: Runtime, now: str) -> str | None:
    """The earliest stored time at which a pass could have work (UTC ISO strings). A queued
    item already due waits for a lock key or a slot: the end of one of this daemon's attempts
    wakes it (`run`), another process's is looked at again within MAX_SLEEP."""
    times = [s.next_due for s in runtime.jobs.values() if s.next_due and not s.paused]
    times += [
        i.not_before for i in runtime.queue.values() if i.state == "queued" and i.not_before > now
    ]
    times += [until for until in runtime.holds.values() if until > now]
    return min(times) if times else None


def run(
    store: Store,
    make_engine: Callable[[threading.Event], Engine],
    stop: threading.Event,
    log: Logger,
) -> None:
    """Loop until `stop` is set. `make_engine(stop)` returns the engine of one pass; what a
    pass says (retries, recoveries, undelivered notifications) goes to `log` (`logs.py`) with
    the daemon's own lines."""
    say = log.bind(source="daemon").info

    def engine_of(event: threading.Event) -> Engine:
        engine = make_engine(event)
        engine.say = say
        return engine

    # one daemon per state directory; with a shared database, one per host (its local dir)
    held = locks.try_lock(store.local_dir / "locks" / "daemon.lock")
    if held is None:
        holder = locks.holder(store.local_dir / "locks" / "daemon.lock")
        raise UserError(f"a daemon already runs for {store.describe()} ({holder or 'unknown'})")
    held.note(f"daemon pid {os.getpid()}")
    say(f"started for {store.describe()}")
    workers = Workers()
    try:
        while not stop.is_set():
            # what the pass saw: an apply or an attempt's end after this looks again at once
            version, ended = store.applied_version(), workers.ended()
            engine = engine_of(stop)
            engine.daemon_pass(workers)
            if stop.is_set():
                break
            runtime = store.runtime()
            now = engine.clock.now()
            wake = next_wake(runtime, iso(now) or "")
            seconds = MAX_SLEEP
            if wake is not None:
                seconds = min(
                    MAX_SLEEP, engine.clock.real_seconds((parse(wake) - now).total_seconds())
                )
            deadline = time.monotonic() + max(0.0, seconds)
            while not stop.is_set() and time.monotonic() < deadline:
                if store.applied_version() != version:
                    break  # an apply changed the jobs: plan again now
                if workers.ended() != ended:
                    break  # an attempt ended: a slot may be free, a retry queued
                stop.wait(min(WAKE_CHECK, max(0.0, deadline - time.monotonic())))
        # stopped: the workers forward the stop to their attempts' supervisors (graceful:
        # interrupted and recorded); wait for them, then end as a stopped tick ends
        workers.join()
        engine_of(stop).daemon_pass(workers)
    finally:
        held.release()
        say("stopped")
