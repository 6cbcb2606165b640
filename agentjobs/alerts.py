"""Threshold alerts: queue depth, the oldest queued run, the failure rate over a window.

Checked after each tick that had work. Crossing a threshold sends one `alert` event to the
global notify targets (`notify` in agentjobs.yaml); it is not sent again until the value has
gone back under the threshold (state in `<state>/alerts.json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from agentjobs.clock import iso, parse
from agentjobs.store import Store

STATE = "alerts.json"


def measure(store: Store, alerts: Mapping[str, Any], now: datetime) -> dict[str, dict[str, Any]]:
    """Each configured alert: its current value, threshold and whether it is over."""
    runtime = store.runtime()
    queued = [i for i in runtime.queue.values() if i.state == "queued"]
    out: dict[str, dict[str, Any]] = {}
    if "queue_depth" in alerts:
        out["queue_depth"] = {"value": len(queued), "threshold": alerts["queue_depth"]}
        out["queue_depth"]["over"] = len(queued) > alerts["queue_depth"]
    if "oldest_queued" in alerts:
        oldest = min((i.queued_at for i in queued), default=None)
        age = (now - parse(oldest)).total_seconds() if oldest else 0.0
        out["oldest_queued"] = {
            "value": round(age),
            "threshold": alerts["oldest_queued"],
            "over": age > alerts["oldest_queued"],
        }
    rate = alerts.get("failure_rate")
    if rate:
        since = now - timedelta(seconds=rate.get("window", 86400.0))
        floor = iso(since) or ""
        outcomes = [
            r.get("outcome")
            for r in store.records(since)
            if r.get("event") == "attempt_finished"
            and r.get("time", "") >= floor
            and r.get("outcome") not in ("interrupted", "rate_limited", "cancelled")
        ]
        failed = sum(1 for o in outcomes if o != "succeeded")
        share = failed / len(outcomes) if outcomes else 0.0
        enough = len(outcomes) >= rate.get("min_attempts", 4)
        out["failure_rate"] = {
            "value": round(share, 3),
            "threshold": rate["threshold"],
            "attempts": len(outcomes),
            "over": enough and share > rate["threshold"],
        }
    return out


def check(store: Store, now: datetime) -> list[dict[str, Any]]:
    """The alert events for thresholds newly crossed (and remember which are over)."""
    config = store.config()
    alerts = config.get("alerts") or {}
    if not alerts:
        return []
    before = store.read_json(STATE)
    if not isinstance(before, dict):  # missing, or damaged: a side file is rebuilt
        before = {}
    current = measure(store, alerts, now)
    events = [
        {
            "event": "alert",
            "job": "(agentjobs)",
            "alert": name,
            "time": iso(now),
            **values,
            "error": f"{name} is {values['value']} (threshold {values['threshold']})",
        }
        for name, values in current.items()
        if values["over"] and not before.get(name)
    ]
    state = {name: bool(values["over"]) for name, values in current.items()}
    if state != before:
        store.write_json(STATE, state)
    return events
