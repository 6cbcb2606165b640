"""One attempt's process handling, with real processes (tests/fake_agent.py stands in)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from agentjobs.runner import Ending, Redactor, run_process

FAKE = str(Path(__file__).with_name("fake_agent.py"))


def _run(tmp_path: Path, *actions: str, **options: object):  # type: ignore[no-untyped-def]
    settings: dict[str, object] = {"timeout": 30.0, "silence_timeout": None, "kill_grace": 1.0}
    settings.update(options)
    return run_process(
        [sys.executable, FAKE, *actions],
        cwd=str(tmp_path),
        env=dict(os.environ),
        log_path=tmp_path / "attempt.log",
        **settings,  # type: ignore[arg-type]
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat", "rb") as handle:  # a zombie is gone too
        return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"


def _grandchild_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if line.startswith("grandchild "):
            return int(line.split()[1])
    raise AssertionError(f"no grandchild line in {log.read_text()!r}")


def test_output_goes_to_the_log_and_the_exit_code_is_kept(tmp_path: Path) -> None:
    result = _run(tmp_path, "print", "hello", "exit", "3")
    assert (result.ending, result.exit_code, result.signal) == (Ending.EXITED, 3, None)
    assert result.output_tail == "hello\n"
    assert (tmp_path / "attempt.log").read_text() == "hello\n"


def test_stdin_is_dev_null_so_a_prompt_cannot_hang_the_job(tmp_path: Path) -> None:
    result = run_process(
        [sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"],
        cwd=str(tmp_path),
        env=dict(os.environ),
        log_path=tmp_path / "l.log",
        timeout=10,
        silence_timeout=None,
        kill_grace=1,
    )
    assert result.output_tail == "''\n"


def test_silence_kills_the_group_even_with_a_grandchild_holding_stdout(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run(
        tmp_path,
        "grandchild",
        "60",
        "print",
        "working",
        "hang",
        silence_timeout=1.0,
        kill_grace=0.5,
    )
    elapsed = time.monotonic() - started
    assert result.ending == Ending.SILENCE
    assert result.signal == "SIGKILL"  # the grandchild ignores SIGTERM
    assert result.error == "no output for 1s"
    assert 1.0 <= elapsed < 4.0
    assert _gone(_grandchild_pid(tmp_path / "attempt.log"))
    assert "[agentjobs] no output for 1s; sent SIGKILL to the process group" in result.output_tail


def test_overall_timeout_even_while_it_prints(tmp_path: Path) -> None:
    actions = []
    for _ in range(40):
        actions += ["print", "tick", "sleep", "0.1"]
    started = time.monotonic()
    result = _run(tmp_path, *actions, timeout=1.0, silence_timeout=0.5, kill_grace=0.5)
    assert result.ending == Ending.TIMEOUT
    assert result.error == "timed out after 1s"
    assert result.signal == "SIGTERM"  # it stopped on TERM within the grace
    assert time.monotonic() - started < 3.0


def test_kill_grace_escalates_from_term_to_kill(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run(tmp_path, "ignore-term", "print", "stubborn", "hang", timeout=0.5, kill_grace=1.0)
    elapsed = time.monotonic() - started
    assert (result.ending, result.signal, result.exit_code) == (Ending.TIMEOUT, "SIGKILL", None)
    assert 1.5 <= elapsed < 3.5  # timeout, then the full grace, then KILL


def test_a_finished_job_leaves_no_process_behind(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run(tmp_path, "grandchild", "60", "print", "done", "exit", "0", kill_grace=0.5)
    assert (result.ending, result.exit_code) == (Ending.EXITED, 0)
    assert time.monotonic() - started < 3.0  # the grandchild holding stdout did not keep it
    assert _gone(_grandchild_pid(tmp_path / "attempt.log"))


def test_a_missing_program_is_a_clear_error(tmp_path: Path) -> None:
    result = run_process(
        ["no-such-program-xyz"],
        cwd=str(tmp_path),
        env=dict(os.environ),
        log_path=tmp_path / "l.log",
        timeout=5,
        silence_timeout=None,
        kill_grace=1,
    )
    assert result.ending == Ending.NOT_STARTED
    assert result.error == "cannot start 'no-such-program-xyz': No such file or directory"


def test_stop_event_interrupts_the_attempt(tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    result = _run(tmp_path, "print", "long job", "hang", stop=stop, kill_grace=0.5)
    assert result.ending == Ending.INTERRUPTED
    assert result.signal == "SIGTERM"


def test_secrets_are_redacted_in_the_log_and_the_tail(tmp_path: Path) -> None:
    result = _run(
        tmp_path, "print", "token=hunter2-secret", "print", "ok", secrets=["hunter2-secret"]
    )
    assert result.output_tail == "token=***\nok\n"
    assert "hunter2" not in (tmp_path / "attempt.log").read_text()


def test_redaction_holds_across_chunk_boundaries() -> None:
    redactor = Redactor(["abcdef"])
    out = redactor.feed(b"xx abc") + redactor.feed(b"def yy\nzz") + redactor.flush()
    assert out == b"xx *** yy\nzz"


_SPEW = """
import sys, time
print("HEAD-MARK first line", flush=True)
for n in range(40):  # 40 x 50 KiB over about 2 s: never silent for long
    sys.stdout.write(f"line {n:04d} " + "x" * (50 * 1024 - 11) + "\\n")
    sys.stdout.flush()
    time.sleep(0.05)
print("TAIL-MARK last line", flush=True)
"""


def test_a_log_over_max_log_size_keeps_its_head_a_marker_and_its_tail(tmp_path: Path) -> None:
    cap = 256 * 1024
    result = run_process(
        [sys.executable, "-c", _SPEW],
        cwd=str(tmp_path),
        env=dict(os.environ),
        log_path=tmp_path / "attempt.log",
        timeout=60.0,
        silence_timeout=1.0,  # output past the cap still counts as output
        kill_grace=1.0,
        max_log_size=cap,
    )
    assert (result.ending, result.exit_code) == (Ending.EXITED, 0)
    data = (tmp_path / "attempt.log").read_bytes()
    total = len("HEAD-MARK first line\n") + 40 * 50 * 1024 + len("TAIL-MARK last line\n")
    assert cap <= len(data) <= cap + 200  # the cap and one marker line
    assert data.startswith(b"HEAD-MARK first line\nline 0000 ")
    assert data.endswith(b"TAIL-MARK last line\n")
    omitted = total - cap
    marker = f"[agentjobs] log capped at 256KiB (max_log_size): {omitted} bytes omitted here"
    assert data.count(b"[agentjobs] log capped") == 1
    assert marker.encode() in data
    head, _, _ = data.partition(b"\n[agentjobs] log capped")
    assert len(head) == cap // 2
    assert result.output_tail.endswith("TAIL-MARK last line\n")


def test_a_log_under_max_log_size_is_left_whole(tmp_path: Path) -> None:
    result = _run(tmp_path, "print", "hello", max_log_size=4096)
    assert result.exit_code == 0
    assert (tmp_path / "attempt.log").read_text() == "hello\n"
