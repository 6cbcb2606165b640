"""Typed run records (issue 11, item 3): one frozen dataclass per event, one codec. What the codec
writes validates against schema/run-record.schema.json, reads back to the same value, and keeps
the on-disk format (a field at its "absent" value is left out, as before)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from agentjobs import runrecords
from agentjobs.retry import Next, Outcome
from tests.conftest import REPO

SCHEMA = json.loads((REPO / "schema" / "run-record.schema.json").read_text())
T = "2026-12-01T12:00:00+00:00"
BASE: dict[str, Any] = {
    "time": T,
    "run_id": "01M8SAQF08J0ADS1MFMJXBJ5W8",
    "job": "fix",
    "attempt": 1,
    "trigger": "schedule",
    "slot": T,
    "queued_at": T,
    "lock_key": "/repo",
    "priority": "normal",
    "host": "h1",
    "pid": 42,
    "spec_hash": "abc",
    "git_commit": None,
    "corrective": False,
}
EVENTS: dict[str, dict[str, Any]] = {
    "attempt_started": {
        "started_at": T,
        "child_pid": 43,
        "supervisor": {"pid": 44, "start": 1, "boot_id": "b"},
        "log_path": "/l",
    },
    "attempt_finished": {
        "started_at": T,
        "finished_at": T,
        "duration_s": 1.5,
        "outcome": "failed",
        "exit_code": 1,
        "signal": None,
        "error": "exit code 1",
        "output_tail": "boom\n",
        "log_path": "/l",
        "next": "retry",
        "next_attempt_at": T,
        "reason": "attempt 1 of 3 failed",
    },
    "slot_skipped": {"reason": "overlap", "outcome": "skipped", "count": 3, "first": T, "last": T},
    "dead_lettered": {"dlq_id": "01M8SAQF08J0ADS1MFMJXBJ5W8", "reason": "x", "outcome": "failed"},
    "replayed": {"dlq_id": "01M8SAQF08J0ADS1MFMJXBJ5W8"},
    "resolved": {"dlq_id": "01M8SAQF08J0ADS1MFMJXBJ5W8", "note": "fixed by hand"},
    "cancelled": {"by": "alice", "reason": "agentjobs cancel", "outcome": "cancelled"},
}


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_each_event_encodes_to_a_valid_line_and_reads_back_the_same(event: str) -> None:
    record = runrecords.make(event, **BASE, **EVENTS[event])
    data = runrecords.encode(record)
    jsonschema.validate(data, SCHEMA)
    assert data == {"event": event, **BASE, **EVENTS[event]}  # the format did not change
    line = json.loads(json.dumps(data))
    assert runrecords.decode(line) == record


def test_outcome_and_next_are_enums_written_as_their_strings() -> None:
    record = runrecords.make("attempt_finished", **BASE, **EVENTS["attempt_finished"])
    assert isinstance(record, runrecords.AttemptFinished)
    assert record.outcome is Outcome.FAILED and record.next is Next.RETRY
    assert json.dumps(runrecords.encode(record)).count('"outcome": "failed"') == 1


def test_absent_fields_stay_out_of_the_line_and_unknown_ones_are_refused() -> None:
    deleted = runrecords.encode(
        runrecords.make("slot_skipped", **BASE, reason="deleted", outcome="skipped")
    )
    assert "count" not in deleted and "first" not in deleted and "replay_of" not in deleted
    jsonschema.validate(deleted, SCHEMA)
    with pytest.raises(TypeError):
        runrecords.make("replayed", **BASE, dlq_id="x", surprise=1)
    with pytest.raises(ValueError, match="unknown record event"):
        runrecords.decode({"event": "exploded"})
    with pytest.raises(ValueError, match="not a resolved record"):
        runrecords.decode({"event": "resolved", **BASE})
    with pytest.raises(ValueError):
        runrecords.make("attempt_finished", **BASE, **{**EVENTS["attempt_finished"], "next": "x"})


def test_a_cancelled_attempt_says_who_cancelled_it_and_when_and_others_do_not() -> None:
    fields = {**EVENTS["attempt_finished"], "outcome": "cancelled", "next": "done"}
    data = runrecords.encode(
        runrecords.make("attempt_finished", **BASE, **fields, by="alice", cancelled_at=T)
    )
    jsonschema.validate(data, SCHEMA)
    assert (data["outcome"], data["by"], data["cancelled_at"]) == ("cancelled", "alice", T)
    plain = runrecords.encode(
        runrecords.make("attempt_finished", **BASE, **EVENTS["attempt_finished"])
    )
    assert "by" not in plain and "cancelled_at" not in plain
    with pytest.raises(jsonschema.ValidationError):  # a cancelled record names who did it
        jsonschema.validate({"event": "cancelled", **BASE, "reason": "x"}, SCHEMA)
