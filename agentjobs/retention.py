"""Retention: old attempt logs go, old record days are rolled into a compressed archive.

`retention: {logs: 30d, records: 90d}` in agentjobs.yaml (logs default 30d; records kept in
place unless set). Applied across all jobs, never to the logs of open dead letters or of runs
still queued or running. `agentjobs gc` runs it; a tick with work runs it at most once a day.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from agentjobs.store import Store

MARKER = "gc.json"


def collect(store: Store, now: datetime) -> dict[str, int]:
    """Apply the applied config's retention now. Returns what was done."""
    retention = store.config().get("retention") or {}
    logs = retention.get("logs", 30 * 86400.0)
    records = retention.get("records")
    keep = {item.run_id for item in store.runtime().queue.values()}
    keep |= {e["run_id"] for e in store.dead_letters() if e.get("status") != "resolved"}
    keep |= {e["run_id"] for e in store.reviews() if e.get("status") == "pending"}
    done = {"logs_removed": 0, "record_days_archived": 0}
    if logs:
        done["logs_removed"] = store.prune_logs((now - timedelta(seconds=logs)).timestamp(), keep)
    if records:
        before = (now - timedelta(seconds=records)).strftime("%Y-%m-%d")
        done["record_days_archived"] = store.archive_records(before)
    store.write_json(MARKER, {"last": now.strftime("%Y-%m-%d"), **done})
    return done


def due(store: Store, now: datetime) -> bool:
    """Whether today's collection has not run yet."""
    marker: Any = store.read_json(MARKER)
    return not isinstance(marker, dict) or marker.get("last") != now.strftime("%Y-%m-%d")
