"""The values that cross the store protocol (agentjobs/store/__init__.py) and the rules they carry."""

from __future__ import annotations

from typing import Any

from agentjobs.store import AppliedJob, QueueItem, held_message, is_database_url


def _applied(spec: dict[str, Any]) -> AppliedJob:
    return AppliedJob("j", spec, "h", "s", "j.yaml", "2026-11-23T12:00:00+00:00")


def test_jobs_share_a_usage_limit_by_limit_key_else_by_agent_kind() -> None:
    assert _applied({"agent": {"kind": "claude", "prompt": "p"}}).limit_key == "claude"
    team = {"agent": {"kind": "claude", "prompt": "p", "limit_key": "team"}}
    assert _applied(team).limit_key == "team"
    assert _applied({"command": ["true"], "agent": None}).limit_key is None  # no agent, no limit
    assert _applied({"command": ["true"]}).limit_key is None


def test_the_held_message_names_the_running_attempt_or_the_holder() -> None:
    item = QueueItem(
        id="j@1",
        run_id="R1",
        job="j",
        trigger="schedule",
        priority="normal",
        lock_key="repo",
        queued_at="t0",
        not_before="t0",
        attempt=2,
        state="running",
        started_at="t1",
        host="a",
    )
    assert held_message("repo", item) == (
        "lock key repo is held by run R1 (job j, attempt 2, started t1)"
    )
    assert held_message("repo", item, with_host=True) == (
        "lock key repo is held by run R1 (job j, attempt 2, host a, started t1)"
    )
    assert held_message("repo", "another process") == "lock key repo is held by another process"


def test_a_state_location_is_a_database_by_its_url_scheme_alone() -> None:
    assert is_database_url("postgresql://u@db/jobs") and is_database_url("postgres://db/jobs")
    for directory in ("postgresql", "./postgres://x", ".agentjobs", "/srv/postgresql/state"):
        assert not is_database_url(directory)
