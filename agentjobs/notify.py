"""Telling people: job events to a command, a webhook, and healthchecks.io-style pings.

Delivery never fails or delays the job: it happens on background threads after the state is
saved, each target with a short timeout and a few retries (tenacity, exponential backoff);
a delivery that still fails is logged and counted (`<state>/notify-failures.json`, shown by
`agentjobs metrics`), never raised. Payloads carry only what the run records carry (outputs and
errors are already redacted; environment values never).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

TIMEOUT = 5.0
TRIES = 3
EVENTS = (
    "failed",
    "dead_lettered",
    "silence",
    "timeout",
    "skipped_overlap",
    "recovered",
    "succeeded",
    "rate_limited",
)


def summary_text(event: Mapping[str, Any]) -> str:
    """One line for chat: Slack and Mattermost incoming webhooks render the `text` field."""
    what = event["event"].replace("_", " ")
    detail = f": {event['error']}" if event.get("error") else ""
    attempt = f" (attempt {event['attempt']})" if event.get("attempt") else ""
    return f"agentjobs {event['job']} {what}{attempt}{detail} [run {event.get('run_id')}]"


class Notifier:
    """Delivers events on a small thread pool; `close()` waits (bounded) for what is pending."""

    def __init__(self, on_failure: Callable[[str], None] = lambda _m: None) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pings: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self.on_failure = on_failure

    def _submit(self, function: Callable[..., None], *args: Any, serial: bool = False) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify")
                # pings go one at a time, in order: a run's /start before its /fail or success
                self._pings = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ping")
            pool = self._pings if serial else self._pool
            assert pool is not None
            self._pending.append(pool.submit(self._guarded, function, *args))

    def _guarded(self, function: Callable[..., None], *args: Any) -> None:
        try:
            function(*args)
        except Exception as exc:  # delivery must never break the job: count and log it
            self.on_failure(f"{function.__name__}: {exc}")

    def event(self, notify: Mapping[str, Any] | None, event: dict[str, Any]) -> None:
        """Send `event` to the job's targets if its `notify.events` lists it."""
        if not notify or event["event"] not in notify.get("events", ()):
            return
        payload = {**event, "text": summary_text(event)}
        if notify.get("webhook"):
            self._submit(_post, notify["webhook"], payload)
        if notify.get("command"):
            self._submit(_command, list(notify["command"]), payload)

    def ping(self, notify: Mapping[str, Any] | None, kind: str, run_id: str) -> None:
        """healthchecks.io-style: `<url>/start`, `<url>` (success) or `<url>/fail`, with `rid`."""
        if not notify or not notify.get("ping_url"):
            return
        base = str(notify["ping_url"]).rstrip("/")
        url = {"start": f"{base}/start", "success": base, "fail": f"{base}/fail"}[kind]
        self._submit(_get, f"{url}?{urllib.parse.urlencode({'rid': run_id})}", serial=True)

    def close(self, timeout: float = TIMEOUT * TRIES + 5) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            pools, self._pool = (self._pool, self._pings), None
        if pending:
            wait(pending, timeout=timeout)
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def _retrying(function: Callable[[], None]) -> None:
    from tenacity import retry, stop_after_attempt, wait_exponential

    retry(
        stop=stop_after_attempt(TRIES), wait=wait_exponential(multiplier=0.5, max=4), reraise=True
    )(function)()


def _post(url: str, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()

    def send() -> None:
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()

    _retrying(send)


def _get(url: str) -> None:
    def send() -> None:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            response.read()

    _retrying(send)


def _command(argv: list[str], payload: dict[str, Any]) -> None:
    from agentjobs.runner import capture

    def send() -> None:
        code, output = capture(argv, timeout=TIMEOUT * 2, stdin=json.dumps(payload).encode())
        if code != 0:
            raise RuntimeError(f"{argv[0]} exited {code}: {output.strip()[-200:]}")

    _retrying(send)
