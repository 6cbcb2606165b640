"""Clock jumps, with the real fault: libfaketime (`faketime -f OFFSET`) under the real CLI.

The promise (issue 10, item 5): a tick while the wall clock is wrong never silences a schedule
once the clock is right again. Each tick checks the stored next-due times, retry times and holds
against what the schedule (or the retry policy's max backoff, or a hold's maximum) allows from
*now*, and brings back anything further ahead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, write

FAKE = str(Path(__file__).with_name("fake_agent.py"))

# Never skipped where it matters: CI installs faketime (.ci/run); a developer without it is
# told what to install.
needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None and not os.environ.get("CI"),
    reason="needs libfaketime (Debian package faketime; .ci/run installs it)",
)


def faked(offset: str | None, state_dir: Path, jobs_dir: Path, *args: str) -> Any:
    """`agentjobs ARGS` in a subprocess, its clock moved by `offset` (`+2d`, `-3h`) or real."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "agentjobs", "--jobs-dir", str(jobs_dir)]
    argv += ["--state-dir", str(state_dir), *args]
    if offset is not None:
        argv = ["faketime", "-f", offset, *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def job(*actions: str, **fields: Any) -> str:
    doc: dict[str, Any] = {"command": [sys.executable, FAKE, *actions]}
    doc.update(fields)
    return json.dumps(doc)


def runtime(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "runtime.json").read_text())


def finished(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((state_dir / "records").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if r["event"] == "attempt_finished"]


def ahead(stamp: str) -> float:
    """Seconds from the real now to `stamp`."""
    return (datetime.fromisoformat(stamp) - datetime.now(UTC)).total_seconds()


@needs_faketime
def test_a_tick_two_days_ahead_does_not_silence_cron_every_or_a_retry(
    jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    write(jobs_dir / "minutely.yaml", job("print", "m", schedule={"cron": "* * * * *"}))
    write(jobs_dir / "hourly.yaml", job("print", "h", schedule={"cron": "30 * * * *"}))
    write(jobs_dir / "often.yaml", job("print", "e", schedule={"every": "2m"}))
    write(
        jobs_dir / "flaky.yaml",
        job(
            "fail-until",
            "2",
            str(counter),
            "print",
            "ok",
            schedule={"every": "1d"},
            retry={"attempts": 3, "backoff": {"initial": "1m", "max": "5m", "jitter": "0s"}},
        ),
    )
    done = faked(None, state_dir, jobs_dir, "apply")
    assert done.returncode == 0, done.stderr
    # one tick while the clock is two days ahead: minutely, often and flaky run there
    done = faked("+2d", state_dir, jobs_dir, "tick")
    assert done.returncode == 1, done.stderr  # flaky failed; its retry is due 2 days ahead
    assert {r["job"] for r in finished(state_dir)} >= {"minutely", "often", "flaky"}
    state = runtime(state_dir)
    assert ahead(state["jobs"]["often"]["next_due"]) > 86400  # the fault, as it was stored
    # the clock is right again: the next tick brings every time back within its schedule
    done = faked(None, state_dir, jobs_dir, "tick")
    assert done.returncode in (0, 1), done.stderr
    assert "the clock is behind times stored in the state" in done.stderr
    state = runtime(state_dir)
    assert ahead(state["jobs"]["minutely"]["next_due"]) <= 61
    assert ahead(state["jobs"]["hourly"]["next_due"]) <= 3601
    assert ahead(state["jobs"]["often"]["next_due"]) <= 121
    retries = [i for i in state["queue"].values() if i["trigger"] == "retry"]
    assert len(retries) == 1 and ahead(retries[0]["not_before"]) <= 301
    # and they run on time: five minutes later, not two days later
    before = {(r["run_id"], r["attempt"]) for r in finished(state_dir)}
    done = faked("+5m", state_dir, jobs_dir, "tick")
    assert done.returncode == 0, done.stderr
    new = [r for r in finished(state_dir) if (r["run_id"], r["attempt"]) not in before]
    ran = {(r["job"], r["outcome"]) for r in new}
    assert ran >= {("minutely", "succeeded"), ("often", "succeeded"), ("flaky", "succeeded")}


@needs_faketime
def test_a_three_hour_backward_jump_does_not_silence_an_every_job(
    jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "often.yaml", job("print", "e", schedule={"every": "2m"}))
    write(jobs_dir / "minutely.yaml", job("print", "m", schedule={"cron": "* * * * *"}))
    assert faked(None, state_dir, jobs_dir, "apply").returncode == 0
    assert faked(None, state_dir, jobs_dir, "tick").returncode == 0
    assert "often" in [r["job"] for r in finished(state_dir)]
    # the clock goes back three hours (an NTP step, a VM restored from a snapshot)
    done = faked("-3h", state_dir, jobs_dir, "tick")
    assert done.returncode == 0, done.stderr
    state = runtime(state_dir)
    back = datetime.now(UTC) - timedelta(hours=3)
    for name, interval in (("often", 121), ("minutely", 61)):
        left = (datetime.fromisoformat(state["jobs"][name]["next_due"]) - back).total_seconds()
        assert left <= interval, (name, state["jobs"][name])
    # three minutes on (still three hours behind the old time) both run
    before = {(r["run_id"], r["attempt"]) for r in finished(state_dir)}
    done = faked("-177m", state_dir, jobs_dir, "tick")
    assert done.returncode == 0, done.stderr
    new = [r for r in finished(state_dir) if (r["run_id"], r["attempt"]) not in before]
    assert sorted(r["job"] for r in new) == ["minutely", "often"]


def test_usage_limit_holds_and_their_retries_come_back_with_the_clock(
    jobs_dir: Path, state_dir: Path
) -> None:
    """A rate-limited retry and its hold, set while the clock was two days ahead, wait what
    they were meant to wait from now (5 hours), not two days more; a hold with nothing to say
    how it was set is cut to the longest an agent's usage limit lasts (MAX_HOLD_S)."""
    from agentjobs.clock import Clock, iso
    from agentjobs.engine import Engine
    from agentjobs.retry import MAX_HOLD_S
    from agentjobs.store import AttemptSummary, QueueItem
    from agentjobs.store.files import FileStore

    write(jobs_dir / "agent.yaml", job("print", "x", schedule={"cron": "0 3 * * *"}))
    assert faked(None, state_dir, jobs_dir, "apply").returncode == 0
    now = datetime.now(UTC).replace(microsecond=0)
    then = now + timedelta(days=2)  # when the clock was wrong
    store = FileStore(state_dir)
    with store.transaction(10) as state:
        finished_at = iso(then) or ""
        reset = iso(then + timedelta(hours=5)) or ""
        state.holds["claude"] = reset
        state.holds["other"] = iso(now + timedelta(days=30)) or ""
        state.queue["agent@x"] = QueueItem(
            id="agent@x",
            run_id="01M8S24RTJFZAGTTKEF1RQBH4A",
            job="agent",
            trigger="retry",
            priority="normal",
            lock_key="agent",
            queued_at=finished_at,
            not_before=reset,
            attempt=2,
            history=(AttemptSummary(1, "rate_limited", finished_at, finished_at),),
        )
    Engine(store, clock=Clock(start=now)).tick()
    state = store.runtime()
    left = (datetime.fromisoformat(state.holds["claude"]) - now).total_seconds()
    assert 5 * 3600 <= left <= 5 * 3600 + 60
    assert state.queue["agent@x"].not_before == state.holds["claude"]
    left = (datetime.fromisoformat(state.holds["other"]) - now).total_seconds()
    assert MAX_HOLD_S <= left <= MAX_HOLD_S + 60


def test_a_state_written_before_the_bound_existed_is_still_checked(
    jobs_dir: Path, state_dir: Path
) -> None:
    """runtime.json without `next_due_max_gap` loads; the first tick that prepares fills it in
    and brings a next-due time two days ahead back."""
    from agentjobs.clock import Clock
    from agentjobs.engine import Engine
    from agentjobs.store.files import FileStore

    write(jobs_dir / "often.yaml", job("print", "e", schedule={"every": "2m"}))
    write(jobs_dir / "now.yaml", job("print", "n", schedule={"every": "1h"}))
    assert faked(None, state_dir, jobs_dir, "apply").returncode == 0
    data = runtime(state_dir)
    ahead_2d = (datetime.now(UTC) + timedelta(days=2)).isoformat(timespec="seconds")
    for name in data["jobs"]:
        del data["jobs"][name]["next_due_max_gap"]
    data["jobs"]["often"]["next_due"] = ahead_2d
    (state_dir / "runtime.json").write_text(json.dumps(data))
    Engine(FileStore(state_dir), clock=Clock()).tick()  # `now` is due: the tick prepares
    state = runtime(state_dir)["jobs"]
    assert state["often"]["next_due_max_gap"] == 120
    assert ahead(state["often"]["next_due"]) <= 121


def test_the_no_op_tick_checks_the_clock_without_schedule_machinery(
    jobs_dir: Path, state_dir: Path
) -> None:
    """STYLE.md rule 14: with every stored time plausible, a tick imports neither croniter nor
    agentjobs.schedule (the check compares strings against the stored bound)."""
    write(jobs_dir / "yearly.yaml", job("print", "y", schedule={"cron": "0 3 1 1 *"}))
    write(jobs_dir / "daily.yaml", job("print", "d", schedule={"every": "1d"}))
    write(jobs_dir / "sixhourly.yaml", job("print", "m", schedule={"cron": "15 */6 * * *"}))
    assert faked(None, state_dir, jobs_dir, "apply").returncode == 0
    assert faked(None, state_dir, jobs_dir, "tick").returncode == 0  # daily runs
    code = (
        "import sys; from agentjobs.cli import main; "
        f"code = main(['--state-dir', {str(state_dir)!r}, 'tick']); "
        "print(sorted(m for m in sys.modules if m in ('croniter', 'agentjobs.schedule')), code)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "[] 0", done.stderr
