"""Damaged state (issue 10, items 9 and 10) and `agentjobs repair`: a missing or wrong-shaped
runtime.json is refused with one line naming it until `repair` rebuilds it from the applied jobs
and the run records (last runs, schedule markers, pending retries); wrong-shaped JSON anywhere
in the state is damage named by its path, never a bug; one damaged dead letter is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_agentjobs, write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
T0 = "2026-11-23T12:00:00Z"


def job(*actions: str, **fields: Any) -> str:
    doc: dict[str, Any] = {"command": [sys.executable, FAKE, *actions]}
    doc.update(fields)
    return json.dumps(doc)


def records(state: Path, event: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((state / "records").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if event is None or r["event"] == event]


@pytest.fixture
def aj(tmp_path: Path) -> Any:
    jobs, state = tmp_path / "jobs.d", tmp_path / "state"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_agentjobs("--jobs-dir", str(jobs), "--state-dir", str(state), *args)

    run.jobs, run.state = jobs, state  # type: ignore[attr-defined]
    return run


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def _with_a_pending_retry(aj: Any) -> None:
    """`flaky` failed at T0 and retries at T0+10m; `fine` succeeded at T0 (every 1h)."""
    retry = {"attempts": 3, "backoff": {"initial": "10m", "max": "1h", "jitter": "0s"}}
    write(aj.jobs / "flaky.yaml", job("exit", "1", schedule={"every": "1d"}, retry=retry))
    write(aj.jobs / "fine.yaml", job("print", "ok", schedule={"every": "1h"}))
    assert aj("apply", "--now", T0).returncode == 0
    assert aj("tick", "--now", T0).returncode == 1


def _snapshot(state: Path) -> dict[str, bytes]:
    """Every state file but the lock file (which names the last process that locked)."""
    return {
        str(p): p.read_bytes()
        for p in sorted(state.rglob("*"))
        if p.is_file() and p.name != "state.lock"
    }


# -- damaged state is refused ------------------------------------------------------------


def test_a_deleted_runtime_json_is_refused_naming_it_and_repair(aj: Any) -> None:
    _with_a_pending_retry(aj)
    (aj.state / "runtime.json").unlink()
    before = _snapshot(aj.state)
    for verb in (["tick", "--now", "2026-11-23T12:11:00Z"], ["status"], ["apply"]):
        one_line_error(aj(*verb), str(aj.state / "runtime.json"), "agentjobs", "repair")
    assert _snapshot(aj.state) == before  # nothing ran, nothing written


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda r: r.pop("queue"), id="no-queue"),
        pytest.param(lambda r: r.pop("jobs"), id="no-jobs"),
        pytest.param(lambda r: r.update(queue=list(r["queue"].values())), id="queue-a-list"),
        pytest.param(
            lambda r: next(iter(r["queue"].values())).pop("lock_key"), id="item-missing-a-key"
        ),
        pytest.param(
            lambda r: next(iter(r["queue"].values())).update(attempt="two"), id="attempt-a-string"
        ),
        pytest.param(lambda r: r["jobs"].update(fine="x"), id="job-state-a-string"),
        pytest.param(lambda r: r.update(holds=[]), id="holds-a-list"),
    ],
)
def test_a_wrong_shaped_runtime_json_is_refused_naming_it(aj: Any, damage: Any) -> None:
    _with_a_pending_retry(aj)
    path = aj.state / "runtime.json"
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    before = _snapshot(aj.state)
    for verb in (["tick", "--now", "2026-11-23T12:11:00Z"], ["status"]):
        one_line_error(aj(*verb), str(path), "damaged", "repair")
    assert _snapshot(aj.state) == before


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("applied.json", "[]"),
        ("applied.json", '{"format": 1, "jobs": {"fine": {"spec": {}}}}'),
        ("applied.json", '{"format": 1, "jobs": []}'),
        ("counters.json", "[1, 2]"),
    ],
)
def test_wrong_shaped_json_elsewhere_is_damage_named_by_its_path(
    aj: Any, name: str, text: str
) -> None:
    _with_a_pending_retry(aj)
    (aj.state / name).write_text(text)
    verbs = [["metrics"]] if name == "counters.json" else [["status"], ["tick"]]
    for verb in verbs:
        one_line_error(aj(*verb), str(aj.state / name), "damaged")


def test_a_fresh_state_dir_still_works(aj: Any) -> None:
    assert aj("tick").returncode == 0
    assert aj("status").returncode == 0
    write(aj.jobs / "fine.yaml", job("print", "ok", schedule={"every": "1h"}))
    assert aj("apply", "--now", T0).returncode == 0
    assert aj("tick", "--now", T0).returncode == 0


def test_one_damaged_dead_letter_is_skipped_with_a_warning(aj: Any) -> None:
    write(aj.jobs / "a.yaml", job("exit", "1", schedule={"every": "1h"}, retry={"attempts": 1}))
    write(aj.jobs / "b.yaml", job("exit", "1", schedule={"every": "1h"}, retry={"attempts": 1}))
    write(aj.jobs / "c.yaml", job("exit", "1", schedule={"every": "1h"}, retry={"attempts": 1}))
    assert aj("apply", "--now", T0).returncode == 0
    assert aj("tick", "--now", T0).returncode == 1
    letters = sorted((aj.state / "dlq").glob("*.json"))
    assert len(letters) == 3
    letters[0].write_text("")  # empty
    letters[1].write_text('["not", "a", "dead", "letter"]')  # wrong shape
    listed = aj("-o", "json", "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)] == [letters[2].stem]
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 2 and all("warning" in w for w in warnings)
    assert str(letters[0]) in warnings[0] and str(letters[1]) in warnings[1]
    for verb in ("metrics", "stats"):
        result = aj(verb)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    one_line_error(aj("dlq", "show", letters[0].stem), str(letters[0]), "damaged")


# -- repair ----------------------------------------------------------------------------------


def test_repair_rebuilds_the_pending_retry_and_it_runs(aj: Any) -> None:
    _with_a_pending_retry(aj)
    path = aj.state / "runtime.json"
    old = json.loads(path.read_text())
    path.unlink()
    result = aj("repair", "--now", "2026-11-23T12:05:00Z")
    assert result.returncode == 0, result.stderr
    assert "2 jobs" in result.stdout and "1 pending retry" in result.stdout
    new = json.loads(path.read_text())
    (item,) = new["queue"].values()
    (was,) = old["queue"].values()
    for key in ("id", "run_id", "job", "attempt", "failures", "not_before", "slot", "lock_key"):
        assert item[key] == was[key], key
    assert item["trigger"] == "retry" and item["state"] == "queued"
    assert [h["outcome"] for h in item["history"]] == ["failed"]
    assert new["jobs"]["fine"]["last_outcome"] == "succeeded"
    assert new["jobs"]["fine"]["next_due"] == old["jobs"]["fine"]["next_due"]  # every 1h after
    assert new["jobs"]["flaky"]["last_outcome"] == "failed"

    assert aj("tick", "--now", "2026-11-23T12:06:00Z").returncode == 0  # nothing due yet
    assert aj("tick", "--now", "2026-11-23T12:11:00Z").returncode == 1  # the retry runs
    flaky = [r for r in records(aj.state, "attempt_finished") if r["job"] == "flaky"]
    assert [(r["attempt"], r["run_id"], r["trigger"]) for r in flaky] == [
        (1, was["run_id"], "schedule"),
        (2, was["run_id"], "retry"),
    ]
    fine = [r for r in records(aj.state, "attempt_started") if r["job"] == "fine"]
    assert len(fine) == 1  # not run again at once


def test_repair_leaves_out_a_retry_that_was_cancelled(aj: Any) -> None:
    # issue 13: a `cancelled` record ends its run; repair must not bring its retry back
    _with_a_pending_retry(aj)
    (was,) = json.loads((aj.state / "runtime.json").read_text())["queue"].values()
    assert aj("cancel", was["run_id"]).returncode == 0
    result = aj("repair", "--force", "--now", "2026-11-23T12:05:00Z")
    assert result.returncode == 0, result.stderr
    assert "0 pending retries" in result.stdout
    assert json.loads((aj.state / "runtime.json").read_text())["queue"] == {}


def test_repair_of_an_attempt_that_started_and_never_finished_records_it_lost_and_retries(
    aj: Any,
) -> None:
    _with_a_pending_retry(aj)
    path = aj.state / "runtime.json"
    (item,) = json.loads(path.read_text())["queue"].values()
    # the retry started (a tick that died after its attempt_started record)...
    started = dict(records(aj.state, "attempt_started")[0])
    started.update(
        time="2026-11-23T12:10:00+00:00",
        started_at="2026-11-23T12:10:00+00:00",
        attempt=2,
        trigger="retry",
        pid=2**22 + 7,  # no such process
        child_pid=2**22 + 8,
        run_id=item["run_id"],
        job="flaky",
    )
    day = aj.state / "records" / "2026-11-23.jsonl"
    with open(day, "a") as handle:
        handle.write(json.dumps(started) + "\n")
    path.unlink()  # ...and runtime.json was lost with it
    result = aj("repair", "--now", "2026-11-23T12:12:00Z")
    assert result.returncode == 0, result.stderr
    assert "1 attempt to recover" in result.stdout
    assert aj("tick", "--now", "2026-11-23T12:13:00Z").returncode == 0
    flaky = [
        (r["attempt"], r["outcome"], r["next"])
        for r in records(aj.state, "attempt_finished")
        if r["job"] == "flaky"
    ]
    assert flaky == [(1, "failed", "retry"), (2, "lost", "retry")]


def test_repair_refuses_a_healthy_runtime_unless_forced_and_keeps_the_old_file(aj: Any) -> None:
    _with_a_pending_retry(aj)
    path = aj.state / "runtime.json"
    healthy = path.read_bytes()
    refused = aj("repair")
    one_line_error(refused, str(path), "--force")
    assert path.read_bytes() == healthy
    forced = aj("repair", "--force", "--now", "2026-11-23T12:05:00Z")
    assert forced.returncode == 0, forced.stderr
    (kept,) = aj.state.glob("runtime.json.damaged-*")
    assert kept.read_bytes() == healthy
    assert len(json.loads(path.read_text())["queue"]) == 1


def test_repair_keeps_a_damaged_runtime_json_beside_the_new_one(aj: Any) -> None:
    _with_a_pending_retry(aj)
    path = aj.state / "runtime.json"
    path.write_text('{"format": 1, "jobs": {}, "queue": []}')
    result = aj("repair", "--now", "2026-11-23T12:05:00Z")
    assert result.returncode == 0, result.stderr
    (kept,) = aj.state.glob("runtime.json.damaged-*")
    assert kept.read_text() == '{"format": 1, "jobs": {}, "queue": []}'
    assert aj("status").returncode == 0
    assert list(aj.state.glob("*.tmp")) == []


def test_repair_json_output(aj: Any) -> None:
    _with_a_pending_retry(aj)
    (aj.state / "runtime.json").unlink()
    result = aj("-o", "json", "repair", "--now", "2026-11-23T12:05:00Z")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["jobs"] == ["fine", "flaky"]
    assert [r["job"] for r in report["retries"]] == ["flaky"]
    assert report["kept"] is None  # nothing to keep: the file was missing


def test_repair_on_postgresql_says_it_is_not_needed() -> None:
    result = run_agentjobs("--state-dir", "postgresql://nobody@127.0.0.1:1/none", "repair")
    one_line_error(result, "PostgreSQL", "not needed")
