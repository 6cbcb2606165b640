"""`agentjobs state export` / `state import`: a whole deployment as one JSONL stream.

Applied jobs and the global config, job states, the queue, usage-limit holds, dead letters and
every run record, one JSON object per line (`kind` says which). It works through the Store
protocol only, so a deployment moves between backends (the file backend and, later, PostgreSQL)
without losing history or dead letters. Attempt logs stay where they are (records keep their
paths). Export refuses while runs are in progress; import refuses a target that already has jobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from agentjobs.clock import iso
from agentjobs.errors import UserError
from agentjobs.store import STATE_FORMAT, AppliedChange, AppliedJob, JobState, QueueItem, Store

BATCH = 1000  # records appended per write on import


def export(store: Store, now: datetime) -> Iterator[str]:
    runtime = store.runtime()
    running = [i.run_id for i in runtime.queue.values() if i.state == "running"]
    if running:
        raise UserError(
            f"{len(running)} run(s) in progress (e.g. {running[0]}); export when no tick is running"
        )

    def line(kind: str, **fields: Any) -> str:
        return json.dumps({"kind": kind, **fields}, separators=(",", ":")) + "\n"

    yield line("format", format=STATE_FORMAT, exported_at=iso(now), source=store.describe())
    yield line("config", value=store.config())
    for name, job in sorted(store.applied().items()):
        yield line("applied", name=name, value=job.to_dict())
    for name, state in sorted(runtime.jobs.items()):
        yield line("job_state", name=name, value=state.to_dict())
    for item in runtime.queue.values():
        yield line("queue_item", value=item.to_dict())
    for key, until in sorted(runtime.holds.items()):
        yield line("hold", key=key, until=until)
    for entry in store.dead_letters():
        yield line("dead_letter", value=entry)
    for entry in store.reviews():
        yield line("review", value=entry)
    for record in store.records():
        yield line("record", value=record)


def import_(store: Store, lines: Iterable[str], lock_timeout: float) -> dict[str, int]:
    """Load an export into an empty store. Returns counts by kind."""
    if store.exists() and store.applied():
        raise UserError(
            f"{store.describe()} already has applied jobs; import into an empty state directory"
        )
    counts: dict[str, int] = {}
    put: dict[str, AppliedJob] = {}
    config: dict[str, Any] = {}
    states: dict[str, JobState] = {}
    queue: dict[str, QueueItem] = {}
    holds: dict[str, str] = {}
    letters: list[dict[str, Any]] = []
    reviews: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        by_day: dict[str, list[dict[str, Any]]] = {}
        for record in batch:
            by_day.setdefault(str(record.get("time", ""))[:10], []).append(record)
        for records in by_day.values():
            stamp = records[0].get("time")
            store.append_records(
                records,
                datetime.fromisoformat(stamp)
                if stamp
                else datetime.fromisoformat("1970-01-01T00:00:00+00:00"),
            )
        batch.clear()

    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
            kind = entry["kind"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"line {number}: not an agentjobs export line") from None
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "format" and entry.get("format", 0) > STATE_FORMAT:
            raise UserError(
                f"the export has format {entry['format']}, newer than this "
                f"agentjobs understands ({STATE_FORMAT}); upgrade agentjobs"
            )
        if kind == "config":
            config = entry["value"]
        elif kind == "applied":
            put[entry["name"]] = AppliedJob.from_dict(entry["name"], entry["value"])
        elif kind == "job_state":
            states[entry["name"]] = JobState.from_dict(entry["value"])
        elif kind == "queue_item":
            item = QueueItem.from_dict(entry["value"])
            queue[item.id] = item
        elif kind == "hold":
            holds[entry["key"]] = entry["until"]
        elif kind == "dead_letter":
            letters.append(entry["value"])
        elif kind == "review":
            reviews.append(entry["value"])
        elif kind == "record":
            batch.append(entry["value"])
            if len(batch) >= BATCH:
                flush()
    flush()
    for letter in letters:
        store.put_dead_letter(letter)
    for review in reviews:
        store.put_review(review)
    with store.transaction(lock_timeout) as runtime:
        runtime.jobs.update(states)
        runtime.queue.update(queue)
        runtime.holds.update(holds)
        store.write_applied(AppliedChange(put=put, config=config or None))
        runtime.applied_version = store.applied_version()
    return counts
