"""Prometheus text exposition of the queue, the run records and the notifier's failures.

Gauges come from the runtime snapshot; counters (attempts, cost) and the duration histogram come
from the run records. Past UTC days never change, so their aggregates are cached in
`metrics-cache.json` in the state directory, keyed by day with the record file's (size, mtime) so
a rewritten or removed day file (retention) is noticed; only today's (and any later) file is read
on every call. Format:
https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agentjobs import costs
from agentjobs.store import PRIORITY_RANK, QueueItem, Runtime, Store

BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)
CACHE_FILE = "metrics-cache.json"
CACHE_FORMAT = 2  # 2: cost by job and agent
NOTIFY_FAILURES_FILE = "notify-failures.json"


@runtime_checkable
class _DayStore(Protocol):
    """What the per-day cache needs from a backend (the file backend has it)."""

    def read_json(self, name: str) -> Any: ...

    def write_json(self, name: str, value: Any) -> None: ...

    def record_days(self) -> dict[str, tuple[int, int]]: ...

    def day_records(self, day: str) -> Iterator[dict[str, Any]]: ...


@dataclass(slots=True)
class Durations:
    """One job's histogram: per-bucket counts (not cumulative; the last is +Inf), sum, count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        self.buckets[index] += 1
        self.total += seconds
        self.count += 1

    def add(self, other: Durations) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.total += other.total
        self.count += other.count

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "sum": self.total, "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Durations:
        return cls(list(data["buckets"]), float(data["sum"]), int(data["count"]))


@dataclass(slots=True)
class Aggregate:
    """Counters over some records: attempts by (job, outcome), cost in USD by (job, agent kind),
    durations and last success by job."""

    attempts: dict[str, dict[str, int]] = field(default_factory=dict)
    durations: dict[str, Durations] = field(default_factory=dict)
    last_success: dict[str, str] = field(default_factory=dict)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)

    def count(self, records: Iterable[Mapping[str, Any]]) -> Aggregate:
        for record in records:
            if record.get("event") != "attempt_finished":
                continue
            job = str(record.get("job", ""))
            outcome = str(record.get("outcome", ""))
            by_outcome = self.attempts.setdefault(job, {})
            by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
            duration = record.get("duration_s")
            self.durations.setdefault(job, Durations()).observe(
                float(duration) if isinstance(duration, int | float) else 0.0
            )
            if outcome == "succeeded":
                finished = str(record.get("finished_at") or record.get("time") or "")
                if finished > self.last_success.get(job, ""):
                    self.last_success[job] = finished
            cost = costs.attempt_cost(record)
            if cost is not None:
                by_agent = self.costs.setdefault(job, {})
                agent = costs.attempt_agent(record) or ""
                by_agent[agent] = round(by_agent.get(agent, 0.0) + cost.usd, 6)
        return self

    def add(self, other: Aggregate) -> None:
        for job, by_outcome in other.attempts.items():
            mine = self.attempts.setdefault(job, {})
            for outcome, n in by_outcome.items():
                mine[outcome] = mine.get(outcome, 0) + n
        for job, durations in other.durations.items():
            self.durations.setdefault(job, Durations()).add(durations)
        for job, finished in other.last_success.items():
            if finished > self.last_success.get(job, ""):
                self.last_success[job] = finished
        for job, by_agent in other.costs.items():
            mine_usd = self.costs.setdefault(job, {})
            for agent, usd in by_agent.items():
                mine_usd[agent] = round(mine_usd.get(agent, 0.0) + usd, 6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "durations": {job: d.to_dict() for job, d in self.durations.items()},
            "last_success": self.last_success,
            "costs": self.costs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Aggregate:
        return cls(
            attempts={job: dict(by) for job, by in data["attempts"].items()},
            durations={job: Durations.from_dict(d) for job, d in data["durations"].items()},
            last_success=dict(data["last_success"]),
            costs={job: {a: float(x) for a, x in by.items()} for job, by in data["costs"].items()},
        )


def aggregate(store: Store, now: datetime) -> Aggregate:
    """Counters over every record; closed days come from the cache when their file is unchanged."""
    if not isinstance(store, _DayStore):
        return Aggregate().count(store.records())
    today = f"{now.astimezone(UTC):%Y-%m-%d}"
    cache = store.read_json(CACHE_FILE)
    cached_days: dict[str, Any] = {}
    if (
        isinstance(cache, dict)
        and cache.get("format") == CACHE_FORMAT
        and cache.get("buckets") == list(BUCKETS)
        and isinstance(cache.get("days"), dict)
    ):
        cached_days = cache["days"]
    days: dict[str, Any] = {}
    total = Aggregate()
    changed = False
    for day, signature in store.record_days().items():
        if day >= today:  # still being written (or ahead of a --now replay): read every time
            total.count(store.day_records(day))
            continue
        entry = cached_days.get(day)
        if entry is not None and entry.get("file") == list(signature):
            try:
                part = Aggregate.from_dict(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                entry = None
        else:
            entry = None
        if entry is None:
            part = Aggregate().count(store.day_records(day))
            entry = {"file": list(signature), **part.to_dict()}
            changed = True
        days[day] = entry
        total.add(part)
    if changed or days.keys() != cached_days.keys():
        # a read-only state directory: metrics still work, just without the cache
        with contextlib.suppress(OSError):
            store.write_json(
                CACHE_FILE, {"format": CACHE_FORMAT, "buckets": list(BUCKETS), "days": days}
            )
    return total


def notification_failures(store: Store) -> int:
    """Notification deliveries that failed: the store counter the notifier keeps
    (`notify_failures`), or a `notify-failures.json` `{"total": N}`; 0 before the first failure.
    Both are monotonic counts of the same thing, so the larger one is the count."""
    counted = store.counters().get("notify_failures", 0) if store.exists() else 0
    data = store.read_json(NOTIFY_FAILURES_FILE) if isinstance(store, _DayStore) else None
    try:
        filed = int(data["total"]) if isinstance(data, dict) else 0
    except (KeyError, TypeError, ValueError):
        filed = 0
    return max(int(counted), filed)


# -- exposition ------------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _seconds(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_number(value)}")


def render(store: Store, now: datetime) -> str:
    """The metrics as Prometheus text exposition format (version 0.0.4)."""
    runtime = store.runtime() if store.exists() else None
    counters = aggregate(store, now) if store.exists() else Aggregate()
    out = _Writer()
    _queue(out, list(runtime.queue.values()) if runtime else [], now)
    _attempts(out, counters, runtime)
    _waiting_for_people(out, store)
    out.family("agentjobs_metrics_generated_timestamp_seconds", "gauge", "When this was written.")
    out.sample("agentjobs_metrics_generated_timestamp_seconds", round(now.timestamp(), 3))
    return "\n".join(out.lines) + "\n"


def _queue(out: _Writer, queue: list[QueueItem], now: datetime) -> None:
    """What waits and runs now."""
    out.family("agentjobs_queued", "gauge", "Runs waiting in the queue, by priority.")
    waiting = [item for item in queue if item.state == "queued"]
    for priority in PRIORITY_RANK:
        out.sample(
            "agentjobs_queued", sum(i.priority == priority for i in waiting), priority=priority
        )

    out.family(
        "agentjobs_oldest_queued_seconds", "gauge", "Age of the oldest waiting run (0 when none)."
    )
    oldest = min((i.queued_at for i in waiting), default=None)
    age = max(0.0, now.timestamp() - _seconds(oldest)) if oldest else 0.0
    out.sample("agentjobs_oldest_queued_seconds", round(age, 3))

    out.family("agentjobs_running", "gauge", "Attempts running now.")
    out.sample("agentjobs_running", sum(i.state == "running" for i in queue))


def _attempts(out: _Writer, counters: Aggregate, runtime: Runtime | None) -> None:
    """Finished attempts: counts by outcome, cost, the last success, durations."""
    out.family("agentjobs_attempts_total", "counter", "Finished attempts, by job and outcome.")
    for job in sorted(counters.attempts):
        for outcome, n in sorted(counters.attempts[job].items()):
            out.sample("agentjobs_attempts_total", n, job=job, outcome=outcome)

    out.family(
        "agentjobs_cost_usd_total",
        "counter",
        "What finished agent attempts cost in USD (their own figure, or estimated from tokens), "
        "by job and agent.",
    )
    for job in sorted(counters.costs):
        for agent, usd in sorted(counters.costs[job].items()):
            out.sample("agentjobs_cost_usd_total", usd, job=job, agent=agent)

    out.family(
        "agentjobs_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last succeeded attempt, by job.",
    )
    last = dict(counters.last_success)
    for job, state in runtime.jobs.items() if runtime else ():
        if state.last_success and state.last_success > last.get(job, ""):
            last[job] = state.last_success
    for job in sorted(last):
        out.sample("agentjobs_last_success_timestamp_seconds", _seconds(last[job]), job=job)

    name = "agentjobs_attempt_duration_seconds"
    out.family(name, "histogram", "Duration of finished attempts, by job.")
    for job in sorted(counters.durations):
        durations = counters.durations[job]
        running_total = 0
        for bound, n in zip((*BUCKETS, float("inf")), durations.buckets, strict=True):
            running_total += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.sample(f"{name}_bucket", running_total, job=job, le=le)
        out.sample(f"{name}_sum", round(durations.total, 6), job=job)
        out.sample(f"{name}_count", durations.count, job=job)


def _waiting_for_people(out: _Writer, store: Store) -> None:
    """Dead letters and reviews a person must decide on; notifications not delivered."""
    out.family("agentjobs_dead_letters_open", "gauge", "Dead letters not yet resolved by a person.")
    dead = store.dead_letters() if store.exists() else []
    out.sample("agentjobs_dead_letters_open", sum(e.get("status") != "resolved" for e in dead))

    out.family(
        "agentjobs_reviews_pending", "gauge", "Runs in the review inbox awaiting a decision."
    )
    reviews = store.reviews() if store.exists() else []
    out.sample("agentjobs_reviews_pending", sum(e.get("status") == "pending" for e in reviews))

    out.family(
        "agentjobs_notification_failures_total",
        "counter",
        "Notification deliveries that failed after their retries.",
    )
    out.sample("agentjobs_notification_failures_total", notification_failures(store))
    pending, undelivered = store.outbox_counts() if store.exists() else (0, 0)
    out.family(
        "agentjobs_notifications_pending",
        "gauge",
        "Notifications in the outbox waiting for delivery (retried by each tick).",
    )
    out.sample("agentjobs_notifications_pending", pending)
    out.family(
        "agentjobs_notifications_undelivered",
        "gauge",
        "Notifications kept as undelivered after their tries (`agentjobs notifications`).",
    )
    out.sample("agentjobs_notifications_undelivered", undelivered)


def write_textfile(path: Path, text: str) -> None:
    """Replace `path` atomically for node_exporter's textfile collector (a temp file it ignores:
    it reads only `*.prom`). Mode 0644 whatever the umask: node_exporter usually runs as another
    user."""
    from agentjobs.store.files import atomic_write

    atomic_write(path, text.encode(), mode=0o644)
