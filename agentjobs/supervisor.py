"""The per-attempt supervisor: an attempt survives its tick (containerd-shim, conmon).

`supervise()` forks a small process for one claimed attempt. The child starts a new session, makes
itself a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`: every descendant of the attempt, even
one that calls `setsid()` and closes its descriptors, stays a descendant of the supervisor), keeps
the attempt's lock key and slot (inherited descriptors, or the lease on a shared store) for the
attempt's whole life, runs the attempt under its watchdog (timeout, silence, kill_grace), stops
every remaining descendant, and settles the attempt in the state itself: its `attempt_finished`
record and the retry or dead letter. So a tick that is killed (`kill -9`, OOM) or stopped
(SIGSTOP) changes nothing for the attempt: the limits are enforced and the true outcome is
recorded all the same, and the lock key is free only once the attempt is settled.

The tick waits for its supervisors: it streams their output (`run` in the foreground), forwards a
graceful stop (SIGTERM to the supervisor, which interrupts the attempt), and takes their result.
When the supervisor cannot write its finish (a full disk) it says so and keeps trying with
backoff, so the true outcome lands once space is back; the tick stops waiting and reports the
problem as one line.

Fork, not exec: the tick already has everything imported, so a supervisor costs a fork
(~1 ms) instead of a Python start-up (~50 ms); see bench/throughput.py. After a fork only the
forking thread exists, so the child never touches a lock another thread may have held: it uses a
fresh store (`Store.reopened()`), fresh engine fields and a fresh record-file descriptor.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentjobs.runner import kill_descendants

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class Channel:
    """What the supervisor's attempt may tell its tick (each call is best effort: a dead or
    stopped tick never blocks the supervisor)."""

    say: Callable[[str], None]
    output: Callable[[bytes], None] | None
    stalled: Callable[[str], None]
    stop: threading.Event


class SupervisorLost(Exception):
    """The supervisor ended without a result (killed): the next tick recovers the attempt."""


class FinishPending(Exception):
    """The supervisor could not write the attempt's finish yet (it keeps trying)."""


def supervise(
    attempt: Callable[[Channel], dict[str, Any]],
    *,
    keep_fds: Sequence[int],
    after_fork: Callable[[], None],
    stop: threading.Event,
    say: Callable[[str], None],
    on_output: Callable[[bytes], None] | None,
    grace: float,
) -> dict[str, Any]:
    """Run `attempt(channel)` in a supervisor process; its returned dict (JSON) comes back.
    `keep_fds` (the attempt's lock descriptors) stay open in the supervisor; `after_fork()` runs
    in this process once the supervisor exists (to let go of this process's copies).

    Raises `FinishPending` (the supervisor keeps trying to record) or `SupervisorLost`.
    """
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC) if on_output is not None else (-1, -1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns (coverage cannot see it)
        _child(attempt, ctl_w, go_r, out_w, keep_fds, grace)
    for fd in (ctl_w, go_r, out_w):
        if fd >= 0:
            os.close(fd)
    after_fork()
    # the attempt starts once this process has let go of what the supervisor now holds
    _write_all(go_w, b"g")
    os.close(go_w)
    try:
        return _wait(pid, ctl_r, out_r, stop, say, on_output)
    finally:
        os.close(ctl_r)
        if out_r >= 0:
            os.close(out_r)


def _wait(
    pid: int,
    ctl_r: int,
    out_r: int,
    stop: threading.Event,
    say: Callable[[str], None],
    on_output: Callable[[bytes], None] | None,
) -> dict[str, Any]:
    fds = [ctl_r] + ([out_r] if out_r >= 0 else [])
    pending = b""
    result: dict[str, Any] | None = None
    stopped = False
    try:
        while fds:
            if stop.is_set() and not stopped:
                stopped = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # graceful: the supervisor interrupts
            ready, _, _ = select.select(fds, [], [], 0.1)
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    fds.remove(fd)
                    continue
                if fd == out_r:
                    assert on_output is not None
                    on_output(data)
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "say" in message:
                        say(message["say"])
                    elif "result" in message:
                        result = message["result"]
                    elif "stalled" in message:
                        raise FinishPending(message["stalled"])
                    elif "crashed" in message:
                        say(f"the attempt's supervisor failed: {message['crashed']}")
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        raise
    finally:
        if result is not None or not fds:
            _reap(pid)
    if result is None:
        raise SupervisorLost(f"the supervisor (pid {pid}) ended without a result")
    return result


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# -- the child -----------------------------------------------------------------------------------


def _child(
    attempt: Callable[[Channel], dict[str, Any]],
    ctl_w: int,
    go_r: int,
    out_w: int,
    keep_fds: Sequence[int],
    grace: float,
) -> None:
    code = 0
    try:
        os.setsid()
        _become_subreaper()
        _close_other_fds({ctl_w, go_r, out_w, *keep_fds})
        select.select([go_r], [], [], 5.0)  # the tick let go (or died, or froze: go on anyway)
        os.close(go_r)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # a cron mailer waiting on the tick's output must not wait for us
            os.dup2(null, fd)
        os.close(null)
        if out_w >= 0:
            os.set_blocking(out_w, False)
        os.set_blocking(ctl_w, False)
        stop = threading.Event()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda _n, _f: stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        from agentjobs import records

        records.after_fork()

        def send(message: dict[str, Any]) -> None:
            _write_all(ctl_w, (json.dumps(message) + "\n").encode())

        def output(data: bytes) -> None:
            with contextlib.suppress(OSError):  # a full pipe (a stopped tick) drops output
                os.write(out_w, data)

        channel = Channel(
            say=lambda line: send({"say": line}),
            output=output if out_w >= 0 else None,
            stalled=lambda why: send({"stalled": why}),
            stop=stop,
        )
        result = attempt(channel)
        kill_descendants(grace)  # normally none left: the attempt stopped them
        send({"result": result})
    except BaseException as exc:  # a bug: say it; the next tick recovers the attempt
        code = 70
        with contextlib.suppress(BaseException):
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            _write_all(ctl_w, (json.dumps({"crashed": detail}) + "\n").encode())
        with contextlib.suppress(BaseException):
            kill_descendants(grace)
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    """Write to the tick; give up quietly when it is gone (EPIPE) or stopped for long."""
    deadline = time.monotonic() + 1.0
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        except OSError:
            return


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    from agentjobs import runner

    runner.SUBREAPER = True  # run_process now stops escaped descendants too


def _close_other_fds(keep: set[int]) -> None:
    """Close every inherited descriptor but `keep` (and 0-2): another worker's lock keys, the
    state lock, database sockets (closed without a goodbye, so the tick's connection lives)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
