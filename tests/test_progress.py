"""Live progress of a running attempt (issue 13): what a command reports (`::progress` lines,
the AGENTJOBS_PROGRESS file) and what an agent's stream says (turns, tool call, cost) is in the
store while the attempt runs, on both backends, and gone once it is settled; `run --pretty`
renders an agent's transcript as it streams; a daemon's log lines carry the time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentjobs import liveview
from agentjobs.clock import parse
from agentjobs.pricing import Meter, price_table
from agentjobs.progress import (
    Activity,
    Progress,
    Reporter,
    describe_progress,
    progress_line,
    report,
    running_progress,
    tool_label,
)
from agentjobs.store.files import FileStore
from tests.conftest import State, wait_for, write
from tests.test_engine import _spawn
from tests.test_faults_disk import fill, tmpfs  # noqa: F401 - a fixture

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)


def _waiting_for(release: Path) -> str:
    """Shell that waits (20 s at most) until `release` exists: the test says when it ends."""
    return f"i=0; while [ ! -e {release} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done"


def _running(state: State) -> dict[str, Progress]:
    with state.store() as store:
        return running_progress(store)


def _stored(state: State) -> dict[str, dict[str, Any]]:
    with state.store() as store:
        return store.progress()


# -- what a command reports --------------------------------------------------------------


def test_a_progress_report_is_a_percent_and_a_message_either_optional() -> None:
    assert report("40 copying files") == (40.0, "copying files")
    assert report("::progress 12.5% step two") == (12.5, "step two")
    assert report("40") == (40.0, None)
    assert report("copying") == (None, "copying")
    assert report("250 too far") == (100.0, "too far")
    assert report("-3 back") == (0.0, "back")
    assert report("nan x") == (None, "nan x")
    assert report("   ") is None
    # only a line that starts with `::progress` is a report
    assert progress_line("::progress 40 copying") == (40.0, "copying")
    assert progress_line("  ::progress 40") == (40.0, None)
    assert progress_line("echo ::progress 40") is None
    assert progress_line("::progressive 40") is None


def test_progress_is_described_in_one_short_line() -> None:
    progress = Progress(
        "R1",
        1,
        updated_at="2026-11-23T12:00:00+00:00",
        started_at="2026-11-23T11:59:00+00:00",
        percent=40,
        message="migrating tables",
        turns=3,
        tool="Bash(make test)",
        cost_usd=0.1234,
        last_output_at="2026-11-23T12:00:00+00:00",
    )
    assert describe_progress(progress, T0 + timedelta(seconds=12)) == (
        "40% migrating tables · turn 3 · Bash(make test) · $0.12 · quiet 12s"
    )
    assert describe_progress(progress, T0) == (
        "40% migrating tables · turn 3 · Bash(make test) · $0.12"
    )
    quiet = Progress("R1", 1, updated_at="x", started_at="2026-11-23T12:00:00+00:00")
    assert describe_progress(quiet, T0 + timedelta(minutes=2)) == "no output for 2m"
    estimated = Progress("R1", 1, updated_at="x", message="copying", cost_usd=0.5)
    estimated = Progress.from_dict({**estimated.to_dict(), "cost_estimated": True})
    assert describe_progress(estimated, T0) == "copying · ~$0.50"


# -- what an agent's stream says ---------------------------------------------------------


def _claude_call(message_id: str, call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    block = {"type": "tool_use", "id": call_id, "name": name, "input": args}
    usage = {"input_tokens": 1000, "output_tokens": 500}
    return {"type": "assistant", "message": {"id": message_id, "content": [block], "usage": usage}}


def _claude_answer(call_id: str) -> dict[str, Any]:
    block = {"type": "tool_result", "tool_use_id": call_id, "content": "ok"}
    return {"type": "user", "message": {"content": [block]}}


def test_turns_and_the_tool_call_in_flight_from_each_agents_stream() -> None:
    claude = Activity("claude")
    text = {"type": "assistant", "message": {"id": "m1", "content": [{"type": "text"}]}}
    assert claude.feed(text) and (claude.turns, claude.tool) == (1, None)
    # the same message's next block is the same turn
    assert claude.feed(_claude_call("m1", "t1", "Bash", {"command": "make   test"}))
    assert (claude.turns, claude.tool) == (1, "Bash(make test)")
    assert claude.feed(_claude_answer("t1")) and claude.tool is None
    claude.feed(_claude_call("m2", "t2", "Read", {"file_path": "src/app.py"}))
    assert (claude.turns, claude.tool) == (2, "Read(src/app.py)")
    claude.feed({"type": "result", "num_turns": 5})
    assert (claude.turns, claude.tool) == (5, None)

    codex = Activity("codex")
    codex.feed({"type": "turn.started"})
    command = {"id": "i1", "type": "command_execution", "command": "bash -lc 'make test'"}
    codex.feed({"type": "item.started", "item": command})
    assert (codex.turns, codex.tool) == (1, "shell(bash -lc 'make test')")
    codex.feed({"type": "item.completed", "item": {**command, "exit_code": 0}})
    assert codex.tool is None

    gemini = Activity("gemini")
    gemini.feed({"type": "message", "role": "user", "content": "fix it"})
    gemini.feed({"type": "message", "role": "assistant", "content": "Let me", "delta": True})
    gemini.feed({"type": "message", "role": "assistant", "content": " look", "delta": True})
    call = {"type": "tool_use", "tool_name": "read_file", "tool_id": "g1"}
    gemini.feed({**call, "parameters": {"absolute_path": "/src/a.py"}})
    assert (gemini.turns, gemini.tool) == (1, "read_file(/src/a.py)")
    gemini.feed({"type": "tool_result", "tool_id": "g1", "status": "success"})
    gemini.feed({"type": "message", "role": "assistant", "content": "Done", "delta": True})
    assert (gemini.turns, gemini.tool) == (2, None)


def test_a_long_tool_argument_is_cut() -> None:
    label = tool_label("Bash", {"command": "x" * 200})
    assert len(label) == len("Bash()") + 60 and label.endswith("…)")
    assert tool_label("TodoWrite", {"todos": []}) == "TodoWrite"


def test_claudes_spend_is_estimated_from_its_messages_until_its_result_says() -> None:
    meter = Meter("claude", "claude-sonnet-4")
    table = price_table(None)
    assert meter.feed(_claude_call("m1", "t1", "Bash", {}))
    assert not meter.feed(_claude_call("m1", "t2", "Bash", {}))  # one message, counted once
    assert meter.cost(table) == (0.0105, True)  # 1000 in at $3/M, 500 out at $15/M
    meter.feed(_claude_call("m2", "t3", "Bash", {}))
    assert meter.cost(table) == (0.021, True)
    meter.feed({"type": "result", "total_cost_usd": 0.25, "usage": {"input_tokens": 10}})
    assert meter.cost(table) == (0.25, False)
    assert not meter.feed(_claude_call("m3", "t4", "Bash", {}))  # the result is the total
    assert (meter.input, meter.output) == (10, 0)


# -- stored while it runs, gone once settled (real processes, both backends) ---------------


def test_a_commands_progress_line_shows_while_it_runs_and_is_gone_once_settled(
    ajs, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    shell = f"echo '::progress 40 copying'; {_waiting_for(release)}; echo done"
    write(jobs_dir / "copy.yaml", json.dumps({"command": shell, "shell": True}))
    assert ajs("apply").code == 0
    runner = _spawn(state.location, "run", "copy")
    try:
        wait_for(lambda: _running(state))
        (progress,) = _running(state).values()
        assert (progress.percent, progress.message, progress.attempt) == (40.0, "copying", 1)
        assert progress.last_output_at is not None and progress.started_at is not None
        (item,) = state.queue("running")
        assert progress.run_id == item.run_id
        stored = _stored(state)[item.run_id]
        assert (stored["attempt"], stored["percent"], stored["message"]) == (1, 40.0, "copying")
        now = parse(progress.last_output_at) + timedelta(seconds=12)
        assert describe_progress(progress, now) == "40% copying · quiet 12s"
    finally:
        release.touch()
        out, err = runner.communicate(timeout=20)
    assert runner.returncode == 0, err
    assert out == "::progress 40 copying\ndone\n"  # the line stays in the output and the log
    assert _stored(state) == {} and _running(state) == {}


def test_a_command_may_report_its_progress_in_the_file_named_in_agentjobs_progress(
    ajs, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    shell = (
        'echo "$AGENTJOBS_PROGRESS"; echo "25 step one" > "$AGENTJOBS_PROGRESS"; sleep 0.3; '
        f'echo "60 step two" > "$AGENTJOBS_PROGRESS"; {_waiting_for(release)}'
    )
    write(jobs_dir / "steps.yaml", json.dumps({"command": shell, "shell": True}))
    assert ajs("apply").code == 0
    runner = _spawn(state.location, "run", "steps")
    try:
        wait_for(lambda: [p.message for p in _running(state).values()] == ["step two"])
        (progress,) = _running(state).values()
        assert progress.percent == 60.0
    finally:
        release.touch()
        out, err = runner.communicate(timeout=20)
    assert runner.returncode == 0, err
    report_file = Path(out.splitlines()[0])
    assert report_file.name.endswith(".1.progress")  # one per attempt, beside its log
    assert not report_file.exists()  # removed with the attempt
    assert _stored(state) == {}


# -- an agent (files only: the stream is read the same whatever the store) -----------------


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/fake_claude.py as `claude` on PATH; returns its data directory (modes.json)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "claude"
    exe.write_text(f"#!{sys.executable}\n{Path(__file__).with_name('fake_claude.py').read_text()}")
    exe.chmod(0o755)
    data = tmp_path / "fake-agent"
    data.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AGENT_DIR", str(data))
    return data


def test_an_agents_turns_tool_call_and_cost_show_while_it_runs(
    aj, jobs_dir: Path, state_dir: Path, fake_claude: Path
) -> None:
    (fake_claude / "modes.json").write_text('["tool_wait"]')
    agent = {"kind": "claude", "prompt": "fix it", "model": "claude-sonnet-4"}
    write(jobs_dir / "fix.yaml", json.dumps({"agent": agent}))
    assert aj("apply").code == 0
    state = State.files(state_dir)
    runner = _spawn(state.location, "run", "fix")
    try:
        wait_for(lambda: any(p.tool for p in _running(state).values()))
        (progress,) = _running(state).values()
        # two messages: the fake's text (no id), then the one calling the tool
        assert (progress.turns, progress.tool) == (2, "Bash(make test)")
        assert (progress.cost_usd, progress.cost_estimated) == (0.0105, True)
        assert describe_progress(progress, parse(progress.updated_at)) == (
            "turn 2 · Bash(make test) · ~$0.01"
        )
    finally:
        (fake_claude / "release").touch()
        _, err = runner.communicate(timeout=20)
    assert runner.returncode == 0, err
    (finished,) = state.records("attempt_finished")
    assert (finished["agent"]["cost_usd"], finished["agent"]["turns"]) == (0.25, 3)  # its result
    assert _stored(state) == {}


def test_run_pretty_renders_the_agents_transcript_as_it_streams(
    aj, jobs_dir: Path, fake_claude: Path
) -> None:
    (fake_claude / "modes.json").write_text('["ok"]')
    write(jobs_dir / "fix.yaml", json.dumps({"agent": {"kind": "claude", "prompt": "fix it"}}))
    assert aj("apply").code == 0
    pretty = aj("run", "--pretty", "fix")
    assert pretty.code == 0, pretty.err
    assert pretty.out.splitlines() == [
        "init: model fake, session sess-1",
        "assistant: working (ok)",
        "result: success (1s, 3 turns, $0.2500, 10 in / 20 out tokens)",
        "  done",
    ]
    raw = aj("run", "fix")
    assert raw.code == 0 and raw.out.startswith('{"type": "system"')


# -- the foreground view on a terminal -----------------------------------------------------


def test_a_quiet_run_shows_its_elapsed_time_on_a_terminal_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(liveview, "QUIET", 0.2)
    monkeypatch.setattr(liveview, "REDRAW", 0.1)
    with liveview.LiveView(pretty=False, tty=True) as view:
        view.write(b"partial")
        time.sleep(0.4)  # never drawn over a line that is not finished
        view.write(b" line\n")
        time.sleep(0.5)
        view.write(b"next\n")
    out = capsys.readouterr().out
    assert out.startswith("partial line\n\r\x1b[K")
    assert "[agentjobs] running for " in out and ", no output for " in out
    assert out.endswith("\r\x1b[Knext\n")  # wiped before the output goes on
    with liveview.LiveView(pretty=False, tty=False) as view:
        time.sleep(0.4)
        view.write(b"next\n")
    assert capsys.readouterr().out == "next\n"


# -- never the attempt's failure -----------------------------------------------------------


def test_a_full_disk_skips_progress_updates_and_they_resume_with_space(
    tmp_path: Path,
    tmpfs: Any,  # noqa: F811 - the fixture
) -> None:
    root = tmpfs(tmp_path / "disk", "256k")
    store = FileStore(root / "state")
    (root / "state").mkdir()
    filler = fill(root)
    reporter = Reporter(store, "R1", 1, lambda: T0, file=root / "R1.1.progress")
    reporter.start()
    try:
        reporter.update(percent=10.0, message="copying")
        time.sleep(0.4)
        assert reporter.writes == 0 and store.progress() == {}
        filler.unlink()
        wait_for(lambda: reporter.writes > 0, timeout=5)
    finally:
        reporter.stop()
    assert store.progress()["R1"]["message"] == "copying"
    reporter.clear()
    assert store.progress() == {}


# -- a daemon's log lines ------------------------------------------------------------------


def test_a_daemons_log_lines_start_with_the_time(jobs_dir: Path, state_dir: Path) -> None:
    write(
        jobs_dir / "fails.yaml",
        json.dumps(
            {
                "command": ["false"],
                "schedule": {"every": "1h"},
                "retry": {"attempts": 2, "backoff": {"initial": "1h", "jitter": "0s"}},
            }
        ),
    )
    apply = [sys.executable, "-m", "agentjobs", "--jobs-dir", str(jobs_dir)]
    subprocess.run([*apply, "--state-dir", str(state_dir), "apply"], check=True)
    state = State.files(state_dir)
    daemon = _spawn(state.location, "daemon")
    try:
        wait_for(lambda: state.records("attempt_finished"))
        time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=15)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    daemon: "  # logs.py
    lines = err.splitlines()
    assert re.fullmatch(stamp + r"started for .*", lines[0]), err
    assert any(re.fullmatch(stamp + r"fails: run \w+ attempt 1 failed .*", x) for x in lines), err
    assert re.fullmatch(stamp + "stopped", lines[-1]), err
