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
import functools
import gc
import json
import os
import select
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentjobs.runner import kill_descendants

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


ACK_WAIT = 5.0  # seconds a supervisor waits for its tick to settle the attempt


@dataclass(frozen=True, slots=True)
class Channel:
    """What the supervisor's attempt may tell its tick (each call is best effort: a dead or
    stopped tick never blocks the supervisor for long)."""

    say: Callable[[str], None]
    output: Callable[[bytes], None] | None
    stalled: Callable[[str], None]
    # hand the attempt's recorded end to the tick; True once the tick has settled it, False
    # when the tick could not (gone, frozen for ACK_WAIT, or its write failed)
    settled_by_tick: Callable[[dict[str, Any]], bool]
    stop: threading.Event


class SupervisorLost(Exception):
    """The supervisor ended without a result (killed): the next tick recovers the attempt."""


class FinishPending(Exception):
    """The supervisor could not write the attempt's end yet (it keeps trying)."""


Handler = Callable[[dict[str, Any], list[int], Channel], dict[str, Any]]


class ForkServer:
    """The process every supervisor of one tick is forked from.

    Forking a supervisor straight from the tick would share the tick's pages with it for the
    attempt's whole life, and the tick, which keeps touching its state, would copy its pages
    anew after every fork (about 1,400 page faults per attempt with 1,000 jobs: more system
    time than the attempt itself). So the tick forks one server, once, on its first attempt;
    the server sleeps on a socket and forks a supervisor per request, handed the attempt's
    description (JSON) and its descriptors (SCM_RIGHTS). The server ends when the tick closes
    the socket or dies; the supervisors it forked live on.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._sock: socket.socket | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def spawn(self, request: dict[str, Any], fds: Sequence[int]) -> int:
        """Fork a supervisor for `request` with `fds` (closed here by the caller); its pid."""
        data = json.dumps(request).encode()
        with self._lock:
            if self._sock is None:
                self._start()
            assert self._sock is not None
            socket.send_fds(self._sock, [data], list(fds))
            reply = self._sock.recv(64)
        if not reply:
            raise SupervisorLost("the supervisors' fork server ended")
        return int(reply)

    def close(self) -> None:
        with self._lock:
            if self._sock is None:
                return
            self._sock.close()
            self._sock = None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)

    def _start(self) -> None:
        _warm()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_REQUEST)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_REQUEST)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the server never returns
            ours.close()
            _serve(theirs, self._handler)
        theirs.close()
        self._sock, self._pid = ours, pid


MAX_REQUEST = 4 << 20  # bytes: an attempt's description (its spec, its item's history)


def _serve(sock: socket.socket, handler: Handler) -> None:
    code = 0
    try:
        gc.freeze()  # nothing here becomes garbage; the collector need not walk (or copy) it
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the tick's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our supervisors
        _close_other_fds({sock.fileno()})
        while True:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 8)
            if not data:
                break  # the tick closed the socket or died
            request = json.loads(data)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - a supervisor never returns
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its children
                ctl_w, go_r, out_w, *keep = fds

                _child(
                    functools.partial(handler, request, keep),
                    ctl_w,
                    go_r,
                    out_w if request.get("output") else -1,
                    keep,
                )
            for fd in fds:
                os.close(fd)
            sock.send(str(pid).encode())
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def supervise(
    server: ForkServer,
    request: dict[str, Any],
    *,
    keep_fds: Sequence[int],
    after_fork: Callable[[], None],
    settle: Callable[[dict[str, Any]], bool],
    stop: threading.Event,
    say: Callable[[str], None],
    on_output: Callable[[bytes], None] | None,
) -> dict[str, Any]:
    """Run `request` in a supervisor process forked by `server`; its result dict comes back.

    `keep_fds` (the attempt's lock descriptors) stay open in the supervisor; `after_fork()` runs
    here once the supervisor exists (to let go of this process's copies); `settle(record)` is
    called here with the attempt's `attempt_finished` record once the supervisor appended it,
    and says whether it settled the attempt (else the supervisor does). Raises `FinishPending`
    (the supervisor keeps trying to record) or `SupervisorLost`.
    """
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC) if on_output is not None else (-1, -1)
    request = {**request, "output": on_output is not None}
    try:
        pid = server.spawn(request, [ctl_w, go_r, out_w if out_w >= 0 else go_r, *keep_fds])
    finally:
        for fd in (ctl_w, go_r, out_w):
            if fd >= 0:
                os.close(fd)
    after_fork()
    # the attempt starts once this process has let go of what the supervisor now holds
    _write_all(go_w, b"g")
    try:
        return _wait(pid, ctl_r, go_w, out_r, stop, say, on_output, settle)
    finally:
        for fd in (ctl_r, go_w, out_r):
            if fd >= 0:
                os.close(fd)


def _wait(
    pid: int,
    ctl_r: int,
    go_w: int,
    out_r: int,
    stop: threading.Event,
    say: Callable[[str], None],
    on_output: Callable[[bytes], None] | None,
    settle: Callable[[dict[str, Any]], bool],
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
                    elif "finished" in message:
                        _write_all(go_w, b"s" if settle(message["finished"]) else b"n")
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
    if result is None:
        raise SupervisorLost(f"the supervisor (pid {pid}) ended without a result")
    return result


def _warm() -> None:
    """Import, once in the tick, what every supervisor needs: each forked supervisor would
    otherwise import it anew (10 ms and more per attempt)."""
    import agentjobs.attempt
    import agentjobs.environment
    import agentjobs.records
    import agentjobs.retry
    import agentjobs.spec  # noqa: F401


# -- the child -----------------------------------------------------------------------------------


def _child(
    attempt: Callable[[Channel], dict[str, Any]],
    ctl_w: int,
    go_r: int,
    out_w: int,
    keep_fds: Sequence[int],
) -> None:
    code = 0
    try:
        # what the tick allocated is never garbage here: the collector skips it (and so does
        # not copy every page it would have touched)
        gc.freeze()
        os.setsid()
        _become_subreaper()
        _close_other_fds({ctl_w, go_r, out_w, *keep_fds})
        if select.select([go_r], [], [], ACK_WAIT)[0]:  # the tick let go (or died, or froze)
            os.read(go_r, 1)
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

        def settled_by_tick(finished: dict[str, Any]) -> bool:
            send({"finished": finished})
            try:  # b"s": settled; b"n": it could not; b"" (the tick died); nothing: frozen
                ready = select.select([go_r], [], [], ACK_WAIT)[0]
                return bool(ready) and os.read(go_r, 1) == b"s"
            except OSError:
                return False

        channel = Channel(
            say=lambda line: send({"say": line}),
            output=output if out_w >= 0 else None,
            stalled=lambda why: send({"stalled": why}),
            settled_by_tick=settled_by_tick,
            stop=stop,
        )
        result = attempt(channel)
        kill_descendants(1.0)  # normally none left: the attempt stopped them
        send({"result": result})
    except BaseException as exc:  # a bug: say it; the next tick recovers the attempt
        code = 70
        with contextlib.suppress(BaseException):
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            _write_all(ctl_w, (json.dumps({"crashed": detail}) + "\n").encode())
        with contextlib.suppress(BaseException):
            kill_descendants(1.0)
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
