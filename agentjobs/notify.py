"""Telling people: job events to a command, a webhook, and healthchecks.io-style pings.

Nothing is dropped silently (issue 10, item 8). Every notification is first written to a durable
**outbox** in the state (`Store.outbox_put`), in the same place and transaction as the record that
caused it; delivering it is a separate step that any later tick or the daemon repeats until it is
done:

- `Notifier.deliver()` (the end of a tick or a `run`) delivers what is due, concurrently
  (`WORKERS`), each request with a `TIMEOUT`; it starts deliveries for at most `WINDOW` seconds
  and then waits only for the requests in flight, so a slow or dead endpoint delays a tick by at
  most `WINDOW + TIMEOUT` seconds (7 s). What is left stays pending for the next pass.
- A failed delivery is tried again later: 5 tries over about 30 minutes (`BACKOFF`: after 1, 4,
  10 and 15 minutes, on the engine's clock). After the last one the event is kept as
  *undelivered* (never deleted), logged in one line, counted (`notify_failures`,
  `agentjobs_notification_failures_total`) and shown by `status`, `metrics` and
  `agentjobs notifications`.
- Delivery is at least once: a tick killed between a delivery and its bookkeeping sends that
  event again. Each webhook and command payload carries the event's `id` for receivers to
  deduplicate.
- Pings of one URL go one at a time in order (a run's `/start` before its `/fail`); a `/start`
  is sent as the attempt starts (in the background), not only when the tick ends.

Payloads carry only what the run records carry (outputs and errors are already redacted;
environment values never).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from agentjobs.clock import iso
from agentjobs.records import new_ulid
from agentjobs.store import OutboxEvent, Store

TIMEOUT = 5.0  # seconds per request (a command gets as long)
WINDOW = 2.0  # seconds a pass starts new deliveries; in-flight ones then get their TIMEOUT
WORKERS = 8  # deliveries at once
BACKOFF = (60, 240, 600, 900)  # seconds before tries 2..5: 5 tries over about 30 minutes
TRIES = len(BACKOFF) + 1
BATCH = 500  # pending events a pass looks at
EVENTS = (
    "failed",
    "dead_lettered",
    "silence",
    "timeout",
    "skipped_overlap",
    "recovered",
    "succeeded",
    "rate_limited",
    "awaiting_review",
)


def summary_text(event: Mapping[str, Any]) -> str:
    """One line for chat: Slack and Mattermost incoming webhooks render the `text` field."""
    what = event["event"].replace("_", " ")
    detail = f": {event['error']}" if event.get("error") else ""
    attempt = f" (attempt {event['attempt']})" if event.get("attempt") else ""
    return f"agentjobs {event['job']} {what}{attempt}{detail} [run {event.get('run_id')}]"


def target_of(event: OutboxEvent) -> str:
    """Where an event goes, for people: a URL's scheme and host only (webhook and ping URLs
    often hold a token in their path), a command's program."""
    if isinstance(event.target, list):
        return f"command {event.target[0] if event.target else '-'}"
    parts = urllib.parse.urlsplit(event.target)
    return f"{event.kind} {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def describe(event: OutboxEvent) -> str:
    """`job event -> target` for messages."""
    what = event.payload.get("event") or "ping"
    return f"{event.payload.get('job', '-')} {what} -> {target_of(event)}"


Outcome = tuple[OutboxEvent, str | None]  # the event and its error (None: delivered)


class Notifier:
    """Writes a tick's events to the outbox (`event`, `ping`) and delivers the outbox
    (`deliver()`).

    `now` is the engine's clock (retry times), `say` its log line. Thread-safe: the engine's
    workers hand it events at once. Delivery threads never touch the store (a PostgreSQL
    connection belongs to its thread): the thread that calls `close()` or `deliver()` books
    the outcomes.
    """

    def __init__(self, store: Store, now: Callable[[], datetime], say: Callable[[str], None]):
        self.store = store
        self.now = now
        self.say = say
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads: list[threading.Thread] = []

    # -- writing -------------------------------------------------------------------------------

    def _new(
        self, kind: str, target: str | list[str], payload: dict[str, Any], key: str | None = None
    ) -> OutboxEvent:
        stamp = iso(self.now()) or ""
        event_id = new_ulid()
        if kind != "ping":
            payload = {**payload, "id": event_id}
        return OutboxEvent(event_id, kind, target, payload, stamp, stamp, key)

    def event(self, notify: Mapping[str, Any] | None, event: dict[str, Any]) -> None:
        """Put `event` in the outbox for the job's targets if its `notify.events` lists it."""
        if not notify or event["event"] not in notify.get("events", ()):
            return
        payload = {**event, "text": summary_text(event)}
        entries = []
        if notify.get("webhook"):
            entries.append(self._new("webhook", str(notify["webhook"]), payload))
        if notify.get("command"):
            entries.append(self._new("command", list(notify["command"]), payload))
        self.store.outbox_put(entries)

    def ping(self, notify: Mapping[str, Any] | None, kind: str, run_id: str) -> None:
        """healthchecks.io-style: `<url>/start`, `<url>` (success) or `<url>/fail`, with `rid`.
        A `/start` is also sent at once in the background (the attempt is running)."""
        if not notify or not notify.get("ping_url"):
            return
        base = str(notify["ping_url"]).rstrip("/")
        url = {"start": f"{base}/start", "success": base, "fail": f"{base}/fail"}[kind]
        entry = self._new("ping", f"{url}?{urllib.parse.urlencode({'rid': run_id})}", {}, base)
        self.store.outbox_put([entry])
        if kind == "start":
            thread = threading.Thread(
                target=self._deliver_all, args=([[entry]], time.monotonic() + WINDOW), daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    # -- delivering ----------------------------------------------------------------------------

    def close(self) -> None:
        """Book what was sent in the background (a `/start`); deliver nothing else. An
        attempt's supervisor ends with this: it must not hold its lock key and slot while
        endpoints answer (its events wait in the outbox for the tick's `deliver()`)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(TIMEOUT + 1)
        self._book()

    def deliver(self, window: float = WINDOW) -> None:
        """Deliver what is due in the whole outbox: start deliveries for up to `window`
        seconds, wait for those in flight (each at most `TIMEOUT`), book every outcome, leave
        the rest for a later pass."""
        self.close()
        now = iso(self.now()) or ""
        groups: dict[str, list[OutboxEvent]] = {}
        blocked: set[str] = set()
        for entry in self.store.outbox_pending(BATCH):
            key = entry.key or entry.id
            if key in blocked:
                continue
            if entry.next_at > now:
                blocked.add(key)  # a later event of this key waits for this one
                continue
            groups.setdefault(key, []).append(entry)
        if groups:
            self._deliver_all(list(groups.values()), time.monotonic() + window)
            self._book()

    def _deliver_all(self, groups: list[list[OutboxEvent]], until: float) -> None:
        """Deliver `groups` (each in order, stopping at its first failure) on up to `WORKERS`
        threads, starting none after `until`."""
        todo = list(reversed(groups))
        guard = threading.Lock()

        def work() -> None:
            while time.monotonic() < until:
                with guard:
                    if not todo:
                        return
                    group = todo.pop()
                for entry in group:
                    error = _deliver(entry)
                    with self._lock:
                        self._outcomes.append((entry, error))
                    if error is not None or time.monotonic() >= until:
                        break

        workers = [
            threading.Thread(target=work, daemon=True, name="notify")
            for _ in range(min(WORKERS, len(groups)))
        ]
        for thread in workers:
            thread.start()
        for thread in workers:  # a request ends by its timeout; the margin is for a slow host
            thread.join(max(0.0, until - time.monotonic()) + TIMEOUT * 2 + 1)

    def _book(self) -> None:
        """Record delivered, retried and given-up events in the store (this thread)."""
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
        retrying: list[str] = []
        for entry, error in outcomes:
            if error is None:
                self.store.outbox_done(entry.id)
                continue
            tries = entry.tries + 1
            if tries < TRIES:
                at = self.now() + timedelta(seconds=BACKOFF[tries - 1])
                self.store.outbox_retry(entry.id, iso(at) or "", error)
                retrying.append(f"{describe(entry)}: {error}")
                continue
            self.store.outbox_dead(entry.id, error)
            self.store.count("notify_failures")
            self.say(
                f"notification not delivered after {tries} tries, kept as undelivered: "
                f"{describe(entry)}: {error}; see `agentjobs notifications`"
            )
        if retrying:
            more = f" (and {len(retrying) - 1} more)" if len(retrying) > 1 else ""
            self.say(f"notification not delivered yet, will retry: {retrying[0]}{more}")


def pending_summary(store: Store) -> list[str]:
    """The `status` lines about notifications: pending and undelivered counts."""
    if not store.exists():
        return []
    pending, undelivered = store.outbox_counts()
    lines = []
    if pending:
        lines.append(
            f"{pending} notification{'s' if pending != 1 else ''} pending (delivery retried "
            "by each tick)"
        )
    if undelivered:
        last = store.outbox_undelivered(1)
        why = f" (first: {describe(last[0])}: {last[0].error})" if last else ""
        lines.append(
            f"{undelivered} notification{'s' if undelivered != 1 else ''} undelivered{why}; "
            "see `agentjobs notifications`"
        )
    return lines


def _deliver(entry: OutboxEvent) -> str | None:
    """Send one event once; the error in one line, or None when it was delivered."""
    try:
        if entry.kind == "webhook":
            _post(str(entry.target), dict(entry.payload))
        elif entry.kind == "command":
            _command(list(entry.target), dict(entry.payload))
        else:
            _get(str(entry.target))
    except Exception as exc:  # delivery must never break the tick: keep it for a retry
        return _one_line(exc)
    return None


def _one_line(exc: Exception) -> str:
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]


def _post(url: str, payload: dict[str, Any]) -> None:
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        response.read()


def _get(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        response.read()


def _command(argv: list[str], payload: dict[str, Any]) -> None:
    from agentjobs.runner import capture

    code, output = capture(argv, timeout=TIMEOUT, stdin=json.dumps(payload).encode())
    if code != 0:
        raise RuntimeError(f"{argv[0]} exited {code}: {output.strip()[-200:]}")


def undelivered_rows(store: Store, limit: int = 1000) -> list[dict[str, Any]]:
    """Pending and undelivered events as rows for `agentjobs notifications`."""
    if not store.exists():
        return []
    rows = []
    for state, entries in (
        ("pending", store.outbox_pending(limit)),
        ("undelivered", store.outbox_undelivered(limit)),
    ):
        for entry in entries:
            rows.append(
                {
                    "id": entry.id,
                    "state": state,
                    "job": entry.payload.get("job"),
                    "event": entry.payload.get("event") or "ping",
                    "kind": entry.kind,
                    "target": target_of(entry),
                    "created_at": entry.created_at,
                    "tries": entry.tries,
                    "next_at": entry.next_at if state == "pending" else None,
                    "error": entry.error,
                }
            )
    return rows
