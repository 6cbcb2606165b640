"""One attempt: the single place agentjobs starts processes (STYLE.md rule 7).

The child runs in its own session (so its process group is ours to kill), with stdin from
/dev/null (an agent waiting for input must not hang on a terminal), stdout and stderr merged into
one pipe that we copy, redacted, into the run's log file as it arrives. A watchdog ends the attempt
on silence (no output byte for `silence_timeout`) or on the overall `timeout`: SIGTERM to the whole
group, `kill_grace`, then SIGKILL. When the main process exits, whatever it left behind in its group
is stopped the same way (systemd's KillMode=control-group), so a grandchild that keeps the pipe
open or ignores SIGTERM never keeps an attempt alive.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from agentjobs.logfile import DEFAULT_MAX_LOG_SIZE, CappedLog

OUTPUT_TAIL_BYTES = 4096
_READ = 65536
_DRAIN_AFTER_EXIT = 0.5  # seconds to keep reading after the main process exits
# Set in an attempt's supervisor (a child subreaper, supervisor.py): every orphaned descendant
# of the attempt becomes its child, so "stop the attempt" can mean every descendant, even one
# that left the process group with setsid().
SUBREAPER = False
PROTECTED: set[int] = set()  # this process's helpers that outlive an attempt (the lease fence)


class StopFlag(Protocol):
    """What ends an attempt early: a `threading.Event`, or `AnyStop` of several."""

    def is_set(self) -> bool: ...


class AnyStop:
    """Set when any of its flags is set; `reason` is the first set flag's (`reasons`)."""

    def __init__(self, *flags: tuple[StopFlag, Callable[[], str]]) -> None:
        self.flags = flags

    def is_set(self) -> bool:
        return any(flag.is_set() for flag, _ in self.flags)

    @property
    def reason(self) -> str:
        for flag, reason in self.flags:
            if flag.is_set():
                return reason()
        return ""


# The fence: a tiny process of its own session, fed one line per lease renewal on a pipe. It
# SIGKILLs the attempt's process group when renewals stop for `window` seconds, when the pipe
# closes without "d" (the runner died: kill -9) or when told to ("k"); "d" ends it quietly.
# bash starts in ~2 ms (Python in ~20-90 ms): one runs beside every attempt on a shared store.
_FENCE_BASH = """
while IFS= read -r -t "$2" cmd; do
    case "$cmd" in
        d) exit 0 ;;
        k) break ;;
    esac
done
kill -KILL -- "-$1" 2>/dev/null
exit 0
"""
_FENCE_PYTHON = """
import os, select, signal, sys, time
pgid, window = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + window
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        break
    if select.select([0], [], [], left)[0]:
        data = os.read(0, 64)
        if b"d" in data:
            sys.exit(0)
        if not data or b"k" in data:
            break
        deadline = time.monotonic() + window
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
"""


class Fence:
    """The runner's side of a fence process (see `start_fence`)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._lock = threading.Lock()
        self._closing = False

    def fired(self) -> bool:
        """Whether the fence killed the group: it ended without being told to end quietly
        (a renewal that came back late does not undo that)."""
        return not self._closing and self.proc.poll() is not None

    def _send(self, byte: bytes) -> None:
        with self._lock:
            stdin = self.proc.stdin
            if stdin is None or stdin.closed:
                return
            with contextlib.suppress(OSError):
                stdin.write(byte)
                stdin.flush()

    def extend(self) -> None:
        self._send(b"e\n")

    def fire(self) -> None:
        self._send(b"k\n")

    def close(self) -> None:
        self._closing = True
        self._send(b"d\n")
        with self._lock:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        PROTECTED.discard(self.proc.pid)


def start_fence(pgid: int, window: float) -> Fence:
    """Start a fence for process group `pgid`: it is SIGKILLed unless `extend()` is called at
    least every `window` seconds, and at once if this process dies first."""
    import shutil
    import sys

    bash = shutil.which("bash")
    if bash is not None:
        argv = [
            bash,
            "--norc",
            "--noprofile",
            "-c",
            _FENCE_BASH,
            "fence",
            str(pgid),
            f"{window:.3f}",
        ]
    else:
        argv = [sys.executable, "-S", "-I", "-c", _FENCE_PYTHON, str(pgid), repr(window)]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    PROTECTED.add(proc.pid)  # not one of the attempt's processes: the supervisor keeps it
    return Fence(proc)


class Ending(StrEnum):
    """How the process ended, before any judgement of success."""

    EXITED = "exited"
    TIMEOUT = "timeout"
    SILENCE = "silence"
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not_started"


@dataclass(frozen=True, slots=True)
class ProcessResult:
    ending: Ending
    exit_code: int | None  # None when killed by a signal or never started
    signal: str | None  # e.g. "SIGKILL" when a signal ended it
    duration_s: float
    output_tail: str  # last 4 KiB of output, redacted
    error: str | None = None  # why it could not start, or what the watchdog did


class Redactor:
    """Replaces secret values with *** in text; safe across chunk boundaries (line-buffered)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pending = b""

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, "***")
        return value

    def feed(self, chunk: bytes) -> bytes:
        """Redacted bytes that are safe to write now (whole lines; the rest waits)."""
        if not self.secrets:
            return chunk
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < 65536:
            self._pending = data
            return b""
        if cut == 0:
            cut = len(data)
        self._pending = data[cut:]
        return self._bytes(data[:cut])

    def flush(self) -> bytes:
        data, self._pending = self._pending, b""
        return self._bytes(data)

    def _bytes(self, data: bytes) -> bytes:
        for secret in self.secrets:
            data = data.replace(secret.encode(), b"***")
        return data


def kill_group(pgid: int, grace: float, main: subprocess.Popen[bytes] | None = None) -> str | None:
    """SIGTERM the group, wait up to `grace` for it to empty, then SIGKILL. Returns the last
    signal sent, or None when the group was already gone."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if main is not None:
            main.poll()  # reap the main process so it does not linger as a zombie
        if not _group_alive(pgid):
            return "SIGTERM"
        time.sleep(0.02)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return "SIGTERM"
    deadline = time.monotonic() + 2.0  # SIGKILL cannot be ignored; wait until it has landed
    while time.monotonic() < deadline and _group_alive(pgid):
        if main is not None:
            main.poll()
        time.sleep(0.01)
    return "SIGKILL"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; look for a live member.
    return any(int(fields[2]) == pgid and fields[0] != b"Z" for _, fields in _processes())


def _processes() -> Iterator[tuple[int, list[bytes]]]:
    """Every process as (pid, the fields of /proc/PID/stat after its name: state, ppid, pgrp...)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                yield int(entry), handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue


def _proc_state(pid: int) -> bytes | None:
    """The state letter from /proc/PID/stat (b"Z" for a zombie), None when there is no such
    process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in (None, b"Z")


def descendants(root: int) -> list[int]:
    """Every live (not zombie) process below `root`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for pid, fields in _processes():
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants(grace: float) -> None:
    """Stop every process left below this one (TERM, `grace`, KILL) and reap what becomes our
    child. In a subreaper that reaps every descendant: "none left" means none at all. The
    processes in `PROTECTED` (the lease fence) are left alone."""
    me = os.getpid()
    deadline: float | None = None
    while True:
        if SUBREAPER and not _has_children():
            return  # every orphaned descendant becomes our child: no child, no descendant
        _reap_children()
        alive = [pid for pid in descendants(me) if pid not in PROTECTED]
        if not alive:
            return
        if deadline is None:
            deadline = time.monotonic() + grace
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        elif time.monotonic() >= deadline:
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _has_children() -> bool:
    """Whether this process has any child, live or exited (one syscall, nothing reaped)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _reap_children() -> None:
    """Reap exited children that are not a helper's (a subreaper inherits zombies)."""
    if not SUBREAPER:
        return
    for pid in descendants_zombies(os.getpid()):
        if pid not in PROTECTED:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def descendants_zombies(parent: int) -> list[int]:
    """The zombie children of `parent`."""
    return [pid for pid, fields in _processes() if fields[0] == b"Z" and int(fields[1]) == parent]


def process_identity(pid: int) -> dict[str, Any]:
    """`pid` as (pid, start time in clock ticks since boot, boot id): never the same for two
    processes, even after the pid is reused or the machine restarted."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            start = int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        start = None
    return {"pid": pid, "start": start, "boot_id": boot_id()}


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def describe_signal(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_process(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    silence_timeout: float | None,
    kill_grace: float,
    secrets: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    stop: StopFlag | None = None,
    on_output: Callable[[bytes], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    max_log_size: int | None = DEFAULT_MAX_LOG_SIZE,
) -> ProcessResult:
    """Run `argv` to completion under the watchdog; output goes to `log_path` (appended),
    at most `max_log_size` bytes of it: the head and the tail (logfile.CappedLog).

    `pass_fds` are inherited by the child (the lock descriptors: a lock stays held while any
    process of the attempt lives, even if this process is killed). `stop` ends the attempt as
    INTERRUPTED (graceful shutdown). `on_start(pid)` is called once the child runs.
    """
    redactor = Redactor(secrets)
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log:
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
                close_fds=True,
            )
        except OSError as exc:
            message = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            log.write(redactor.text(message + "\n").encode())
            return ProcessResult(
                Ending.NOT_STARTED, None, None, 0.0, redactor.text(message), redactor.text(message)
            )
        if on_start is not None:
            on_start(proc.pid)
        output = _Output(proc, redactor, CappedLog(log, log_path, max_log_size), on_output)
        ending, note = output.watch(started, timeout, silence_timeout, stop)
        sent = kill_group(proc.pid, kill_grace, proc) if ending != Ending.EXITED else None
        proc.wait()
        # Whatever the main process left in its group is stopped (no orphans), then the pipe
        # is drained of what is already in it without waiting for escaped writers.
        if _group_alive(proc.pid):
            kill_group(proc.pid, kill_grace)
        if SUBREAPER:  # and whatever left the group (setsid) is stopped with the attempt
            kill_descendants(kill_grace)
        output.drain()
        if note:
            output.keep(
                f"\n[agentjobs] {note}; sent {sent or 'nothing'} to the process group\n".encode()
            )
        output.capped.finish()
    code = proc.returncode
    sig = describe_signal(-code) if code < 0 else None
    return ProcessResult(
        ending=ending,
        exit_code=code if code >= 0 else None,
        signal=sent if ending != Ending.EXITED and sent else sig,
        duration_s=round(time.monotonic() - started, 3),
        output_tail=bytes(output.tail[-OUTPUT_TAIL_BYTES:]).decode("utf-8", errors="replace"),
        error=note,
    )


class _Output:
    """A running process's output: redacted, logged (capped), passed on, its tail kept; and the
    watchdog that reads it until the process ends or a limit (timeout, silence, stop) is hit."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        redactor: Redactor,
        capped: CappedLog,
        on_output: Callable[[bytes], None] | None,
    ) -> None:
        assert proc.stdout is not None
        self.proc, self.redactor, self.capped, self.on_output = proc, redactor, capped, on_output
        self.fd = proc.stdout.fileno()
        self.tail = bytearray()
        self.last_output = time.monotonic()
        self.pipe_open = True

    def keep(self, data: bytes) -> None:
        if not data:
            return
        self.capped.write(data)  # the whole output still counts as output (silence, tail)
        if self.on_output is not None:
            self.on_output(data)
        self.tail += data
        if len(self.tail) > OUTPUT_TAIL_BYTES * 2:
            del self.tail[: len(self.tail) - OUTPUT_TAIL_BYTES]

    def watch(
        self, started: float, timeout: float, silence: float | None, stop: StopFlag | None
    ) -> tuple[Ending, str | None]:
        """Read until the process exited and its output closed (or a short drain passed), or
        until a limit is hit: which ending, and the note saying why."""
        proc = self.proc
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (
                not self.pipe_open or now - exited_at >= _DRAIN_AFTER_EXIT
            ):
                return Ending.EXITED, None
            waits = [0.1]
            if exited_at is None:
                waits.append(max(0.0, started + timeout - now))
                if silence is not None:
                    waits.append(max(0.0, self.last_output + silence - now))
            if self.pipe_open:
                ready = select.select([self.fd], [], [], min(waits))[0]
            else:  # output closed: wait for the exit itself, returning the moment it comes
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(min(waits))
                ready = []
            if ready:
                self.read()
                continue
            if exited_at is not None:
                continue
            now = time.monotonic()
            if stop is not None and stop.is_set():
                return Ending.INTERRUPTED, getattr(stop, "reason", "") or "stopped by shutdown"
            if now - started >= timeout:
                return Ending.TIMEOUT, f"timed out after {timeout:g}s"
            if silence is not None and now - self.last_output >= silence:
                return Ending.SILENCE, f"no output for {silence:g}s"

    def read(self) -> None:
        chunk = os.read(self.fd, _READ)
        if chunk:
            self.last_output = time.monotonic()
            self.keep(self.redactor.feed(chunk))
        else:  # EOF: every writer closed the pipe
            self.pipe_open = False

    def drain(self) -> None:
        """What is already in the pipe, without waiting for writers that escaped; then close."""
        while self.pipe_open and select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, _READ)
            if not chunk:
                break
            self.keep(self.redactor.feed(chunk))
        self.keep(self.redactor.flush())
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _short(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60.0,
    merge_stderr: bool = True,
) -> tuple[int | None, str, str]:
    """Run a short helper command to completion: (exit code, stdout, stderr). stderr is merged
    into stdout unless `merge_stderr` is false. None as the code when it cannot start or runs
    past `timeout` (then its whole group is killed, as for an attempt)."""
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return None, "", str(exc)
    try:
        output, errors = proc.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, 1.0, proc)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:  # a process that left the group may still hold a pipe
                pipe.close()
        return None, "", f"{argv[0]} took longer than {timeout:g}s"
    return (
        proc.returncode,
        output.decode("utf-8", errors="replace"),
        (errors or b"").decode("utf-8", errors="replace"),
    )


def version_of(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 10.0
) -> str | None:
    """The first line `argv` (e.g. `[claude, --version]`) prints, or None when it cannot start,
    fails or takes longer than `timeout`."""
    code, output, _ = _short(argv, env=env, timeout=timeout)
    if code != 0:
        return None
    lines = [line.strip() for line in output.splitlines()]
    return next((line for line in lines if line), None)


def capture(
    argv: Sequence[str],
    cwd: str | None = None,
    timeout: float = 60.0,
    stdin: bytes | None = None,
) -> tuple[int | None, str]:
    """Run a short helper command (git, a notify command): (exit code, output with stderr)."""
    code, output, errors = _short(argv, cwd=cwd, stdin=stdin, timeout=timeout)
    return code, output if code is not None else errors


def communicate(
    argv: Sequence[str], stdin: str = "", timeout: float = 60.0
) -> tuple[int | None, str, str]:
    """Run a short helper command (crontab) with `stdin` as its input: (exit code, stdout,
    stderr), kept apart so a message on stderr never mixes into the data."""
    return _short(argv, stdin=stdin.encode(), timeout=timeout, merge_stderr=False)
