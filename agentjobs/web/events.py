"""The live event feed behind `GET /api/events` (server-sent events).

One feed per server, shared by every listener: at most once per `interval` seconds one of them
asks the query layer what changed in the state (`query.changes`: the queue, each job's last
attempt, the holds) and appends what it finds, numbered, to a bounded buffer; every listener
sends what it has not sent yet. A listener that reconnects with `Last-Event-ID` gets what it
missed while the buffer still holds it. Nothing is polled while nobody listens.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import anyio
import anyio.to_thread

from agentjobs import query
from agentjobs.store import Store


class EventFeed:
    def __init__(
        self,
        store: Callable[[], Store],
        now: Callable[[], datetime],
        interval: float = 1.0,
        keep: int = 1000,
    ) -> None:
        self._store = store
        self._now = now
        self.interval = interval
        self._events: deque[tuple[int, query.Change]] = deque(maxlen=keep)
        self._seq = 0
        self._snapshot: query.Snapshot | None = None
        self._polled = 0.0
        self._lock = threading.Lock()
        self.errors = 0  # polls that failed (the state was unavailable); the feed goes on

    @property
    def last_id(self) -> int:
        return self._seq

    def _due(self) -> bool:
        return time.monotonic() - self._polled >= self.interval

    def poll(self) -> None:
        """Compare the state with the last look and append what changed (one poller at a
        time; a call while another polls returns at once)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if not self._due() and self._snapshot is not None:
                return
            store = self._store()
            try:
                if self._snapshot is None:
                    self._snapshot = query.snapshot(store)
                else:
                    self._snapshot, found = query.changes(store, self._snapshot, self._now())
                    for change in found:
                        self._seq += 1
                        self._events.append((self._seq, change))
            except Exception:  # an unavailable state must not end the feed: try again later
                self.errors += 1
            self._polled = time.monotonic()
        finally:
            self._lock.release()

    async def start(self) -> int:
        """Take the first look if none was taken (so a change made right after this returns is
        seen); the id of the newest event."""
        if self._snapshot is None:
            await anyio.to_thread.run_sync(self.poll)
        return self._seq

    async def follow(
        self, after: int, keepalive: float = 15.0
    ) -> AsyncIterator[tuple[int, query.Change] | None]:
        """Events after id `after`, as they come; None every `keepalive` seconds of quiet."""
        cursor = after
        quiet = time.monotonic()
        while True:
            if self._due():
                await anyio.to_thread.run_sync(self.poll)
            pending = [(seq, change) for seq, change in list(self._events) if seq > cursor]
            for seq, change in pending:
                cursor = seq
                quiet = time.monotonic()
                yield seq, change
            if time.monotonic() - quiet >= keepalive:
                quiet = time.monotonic()
                yield None
            await anyio.sleep(min(self.interval, 0.25))


def sse(seq: int, change: query.Change) -> str:
    """One server-sent event: its id, its kind as the event name, the change as JSON."""
    data = json.dumps(query.as_json(change), separators=(",", ":"))
    return f"id: {seq}\nevent: {change.kind}\ndata: {data}\n\n"
