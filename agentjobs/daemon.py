"""`agentjobs daemon`: ticks in a loop for people who prefer a service to a crontab line.

Each pass is an ordinary `Engine.tick()`, so cron ticks alongside a daemon stay safe (all
coordination is in the locks and the state). Between passes it sleeps until the next due slot,
retry or usage-limit reset - not a fixed poll - and wakes at once when `apply` changes the
applied jobs. One daemon per state directory (a lock). SIGTERM/SIGINT: stop claiming, stop running
attempts gracefully, exit.
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
    from agentjobs.engine import Engine

MAX_SLEEP = 30.0  # seconds; also how often a held lock or a paused job is looked at again
WAKE_CHECK = 0.05  # seconds between checks for an apply while sleeping


def next_wake(runtime: Runtime, now: str) -> str | None:
    """The earliest stored time at which a pass could have work (UTC ISO strings)."""
    times = [s.next_due for s in runtime.jobs.values() if s.next_due and not s.paused]
    times += [i.not_before for i in runtime.queue.values() if i.state == "queued"]
    times += [until for until in runtime.holds.values() if until > now]
    return min(times) if times else None


def run(
    store: Store,
    make_engine: Callable[[threading.Event], Engine],
    stop: threading.Event,
    say: Callable[[str], None],
) -> None:
    """Loop until `stop` is set. `make_engine(stop)` returns one pass (an Engine's tick)."""
    # one daemon per state directory; with a shared database, one per host (its local dir)
    held = locks.try_lock(store.local_dir / "locks" / "daemon.lock")
    if held is None:
        holder = locks.holder(store.local_dir / "locks" / "daemon.lock")
        raise UserError(f"a daemon already runs for {store.describe()} ({holder or 'unknown'})")
    held.note(f"daemon pid {os.getpid()}")
    say(f"daemon started for {store.describe()}")
    try:
        while not stop.is_set():
            engine = make_engine(stop)
            engine.tick()
            if stop.is_set():
                break
            version = store.applied_version()
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
                stop.wait(min(WAKE_CHECK, max(0.0, deadline - time.monotonic())))
    finally:
        held.release()
        say("daemon stopped")
