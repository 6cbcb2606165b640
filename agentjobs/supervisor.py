"""The per-attempt supervisor: an attempt survives its tick (containerd-shim, conmon).

`supervise()` runs a claimed attempt in a small process of its own (forked, or an idle one reused:
one attempt at a time, see `Lane`). The process starts a new session, makes
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
(~1 ms) instead of a Python start-up (~50 ms). And a supervisor is reused: once its tick settled
its attempt, it closes the attempt's descriptors and waits on its link for the worker's next
attempt (`Lane`), which so costs no fork, no exit and no page copies at all; see
bench/throughput.py. After a fork only the forking thread exists, so the child never touches a
lock another thread may have held: it uses a fresh store (`Store.reopened()`), fresh engine
fields and a fresh record-file descriptor.

The link between a tick's worker and its supervisor is one `SOCK_SEQPACKET` socket pair:
datagrams, so each message arrives whole, and descriptors travel with a request. The tick says
b"g" (go: it let go of its copies), b"s"/b"n" (it settled the attempt, or could not) and b"r"
+ a request (the next attempt, with its descriptors); the supervisor sends JSON messages (say,
finished, stalled, crashed, result). The end of the link is how either side learns the other
is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
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
            for again in (False, True):
                if self._sock is None:
                    self._start()
                assert self._sock is not None
                try:
                    socket.send_fds(self._sock, [data], list(fds))
                    break
                except OSError:  # the server died (killed): nothing was sent; a new one
                    self._stop()
                    if again:
                        raise SupervisorLost("the supervisors' fork server cannot start") from None
            try:
                reply = self._sock.recv(64) if self._sock is not None else b""
            except OSError:
                reply = b""
        if not reply:  # the request may or may not have been forked: never send it twice
            raise SupervisorLost("the supervisors' fork server ended")
        return int(reply)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
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


def _pair() -> tuple[socket.socket, socket.socket]:
    """A tick-supervisor link: datagrams (one message each, never split or merged) that carry
    descriptors, with room for the largest request."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_REQUEST)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_REQUEST)
    return ours, theirs


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
            pid = os.fork()
            if pid == 0:  # pragma: no cover - a supervisor never returns
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its children
                _child(handler, json.loads(data), fds)
            for fd in fds:
                os.close(fd)
            sock.send(str(pid).encode())
    except BaseException:
        code = 70
    finally:
        os._exit(code)


class Lane:
    """One worker's supervisors, in sequence: the supervisor that ran the worker's last attempt
    (now idle, its descriptors closed) takes the next one, so an attempt costs no fork, no
    process exit and no copy of the pages a new supervisor would write to (bench/throughput.py).
    A supervisor that settled an attempt itself (its tick was frozen), crashed or was killed is
    never reused: the next attempt gets a new one from the fork server. `close()` lets the idle
    one go (it exits on the end of its link, as it would on the tick's death)."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self._idle: tuple[int, socket.socket] | None = None

    def start(self, request: dict[str, Any], fds: Sequence[int]) -> tuple[int, socket.socket]:
        """Hand `request` and `fds` (closed here by the caller) to a supervisor: its pid and
        link. The attempt starts once the link says b"g" (go)."""
        if self._idle is not None:
            pid, link = self._idle
            self._idle = None
            try:  # an idle supervisor waits for exactly this; a dead one refuses it (EPIPE)
                socket.send_fds(link, [b"r" + json.dumps(request).encode()], list(fds))
                return pid, link
            except OSError:
                link.close()
        ours, theirs = _pair()
        try:
            pid = self.server.spawn(request, [theirs.fileno(), *fds])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return pid, ours

    def keep(self, pid: int, link: socket.socket) -> None:
        self.close()
        self._idle = (pid, link)

    def close(self) -> None:
        if self._idle is not None:
            self._idle[1].close()
            self._idle = None


def supervise(
    lane: Lane,
    request: dict[str, Any],
    *,
    keep_fds: Sequence[int],
    after_fork: Callable[[], None],
    settle: Callable[[dict[str, Any]], bool],
    stop: threading.Event,
    say: Callable[[str], None],
    on_output: Callable[[bytes], None] | None,
    cancel: threading.Event | None = None,
    on_cancel: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Run `request` in a supervisor process of `lane`; its result dict comes back.

    `keep_fds` (the attempt's lock descriptors) stay open in the supervisor; `after_fork()` runs
    here once the supervisor holds them (to let go of this process's copies); `settle(record)`
    is called here with the attempt's `attempt_finished` record once the supervisor appended
    it, and says whether it settled the attempt (else the supervisor does). `stop` set: the
    supervisor is told to interrupt the attempt (SIGTERM); `cancel` set: `on_cancel()` is
    called here, once (it records a cancel the supervisor finds in the state). Raises
    `FinishPending` (the supervisor keeps trying to record) or `SupervisorLost`.
    """
    out_r, out_w = os.pipe2(os.O_CLOEXEC) if on_output is not None else (-1, -1)
    request = {**request, "output": on_output is not None}
    try:
        pid, link = lane.start(request, [*([out_w] if out_w >= 0 else []), *keep_fds])
    finally:
        if out_w >= 0:
            os.close(out_w)
    after_fork()
    # the attempt starts once this process has let go of what the supervisor now holds
    reuse = False
    try:
        _tell(link, b"g")
        result = _wait(pid, link, out_r, stop, say, on_output, settle, (cancel, on_cancel))
        reuse = bool(result.pop("idle", False)) and not stop.is_set()
        return result
    finally:
        if reuse:
            lane.keep(pid, link)
        else:
            link.close()
        if out_r >= 0:
            os.close(out_r)


def _tell(link: socket.socket, data: bytes) -> None:
    """A message to the supervisor; dropped when it is gone (it then needs none)."""
    with contextlib.suppress(OSError):
        link.send(data)


def _wait(
    pid: int,
    link: socket.socket,
    out_r: int,
    stop: threading.Event,
    say: Callable[[str], None],
    on_output: Callable[[bytes], None] | None,
    settle: Callable[[dict[str, Any]], bool],
    cancel: tuple[threading.Event | None, Callable[[], None]],
) -> dict[str, Any]:
    fds = [link.fileno()] + ([out_r] if out_r >= 0 else [])
    stopped = False
    cancelled, on_cancel = cancel
    try:
        while fds:
            if stop.is_set() and not stopped:
                stopped = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # graceful: the supervisor interrupts
            if cancelled is not None and cancelled.is_set():
                cancelled = None  # once
                on_cancel()
            ready, _, _ = select.select(fds, [], [], 0.1)
            for fd in ready:
                if fd == out_r:
                    assert on_output is not None
                    data = os.read(fd, 65536)
                    if data:
                        on_output(data)
                    else:
                        fds.remove(fd)
                    continue
                try:
                    data = link.recv(MAX_REQUEST)
                except OSError:
                    data = b""
                if not data:
                    fds.remove(fd)
                    continue
                message = json.loads(data)
                if "say" in message:
                    say(message["say"])
                elif "finished" in message:
                    _tell(link, b"s" if settle(message["finished"]) else b"n")
                elif "result" in message:
                    if out_r >= 0:  # its output is all in the pipe, which it closed
                        _drain(out_r, on_output)
                    return {**message["result"], "idle": message.get("idle", False)}
                elif "stalled" in message:
                    raise FinishPending(message["stalled"])
                elif "crashed" in message:
                    say(f"the attempt's supervisor failed: {message['crashed']}")
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        raise
    raise SupervisorLost(f"the supervisor (pid {pid}) ended without a result")


def _drain(fd: int, on_output: Callable[[bytes], None] | None) -> None:
    while data := os.read(fd, 65536):
        if on_output is not None:
            on_output(data)


def _warm() -> None:
    """Import, once in the tick, what every supervisor needs: each forked supervisor would
    otherwise import it anew (10 ms and more per attempt)."""
    import agentjobs.attempt
    import agentjobs.environment
    import agentjobs.records
    import agentjobs.retry
    import agentjobs.spec  # noqa: F401


# -- the child -----------------------------------------------------------------------------------


class _Stop:
    """The current attempt's stop flag; SIGTERM and SIGINT set it (between attempts: the
    supervisor ends)."""

    event = threading.Event()

    @classmethod
    def signalled(cls, _number: int, _frame: object) -> None:
        cls.event.set()


def _child(handler: Handler, request: dict[str, Any], fds: list[int]) -> None:
    """A supervisor: attempts, one after the other, as its tick hands them over its link."""
    code = 0
    link_fd, *fds = fds
    link = socket.socket(fileno=link_fd)
    try:
        # what the tick allocated is never garbage here: the collector skips it (and so does
        # not copy every page it would have touched)
        gc.freeze()
        os.setsid()
        _become_subreaper()
        _close_other_fds({link_fd, *fds})
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # a cron mailer waiting on the tick's output must not wait for us
            os.dup2(null, fd)
        os.close(null)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, _Stop.signalled)
        # A hang-up (the tick's terminal closing) is not for the supervisor: caught, not ignored,
        # so the agents it starts get the default action back at exec (an ignored signal stays
        # ignored across exec; SIGPIPE is restored by subprocess itself).
        signal.signal(signal.SIGHUP, _ignore)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        from agentjobs import records

        records.after_fork()
        link.setblocking(False)
        following: tuple[dict[str, Any], list[int]] | None = (request, fds)
        while following is not None:
            request, fds = following
            if not _one(handler, request, link, fds):
                break
            following = _next(link)
    except BaseException as exc:  # a bug: say it; the next tick recovers the attempt
        code = 70
        with contextlib.suppress(BaseException):
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            _send(link, {"crashed": detail})
        with contextlib.suppress(BaseException):
            kill_descendants(1.0)
    finally:
        os._exit(code)


def _ignore(_number: int, _frame: object) -> None:
    pass


def _one(handler: Handler, request: dict[str, Any], link: socket.socket, fds: list[int]) -> bool:
    """One attempt; whether this supervisor may take another (its tick settled this one)."""
    out_w, keep = (fds[0], fds[1:]) if request.get("output") else (-1, fds)
    received = {fd: _identity(fd) for fd in fds}
    stop = _Stop.event = threading.Event()
    _receive(link, ACK_WAIT)  # b"g": the tick let go (or it died, or froze)
    if out_w >= 0:
        os.set_blocking(out_w, False)
    by_tick = [True]

    def output(data: bytes) -> None:
        with contextlib.suppress(OSError):  # a full pipe (a stopped tick) drops output
            os.write(out_w, data)

    def settled_by_tick(finished: dict[str, Any]) -> bool:
        _send(link, {"finished": finished})
        # b"s": settled; b"n": it could not; b"" (the tick died); None: frozen
        by_tick[0] = _receive(link, ACK_WAIT) == b"s"
        return by_tick[0]

    channel = Channel(
        say=lambda line: _send(link, {"say": line}),
        output=output if out_w >= 0 else None,
        stalled=lambda why: _send(link, {"stalled": why}),
        settled_by_tick=settled_by_tick,
        stop=stop,
    )
    result = handler(request, keep, channel)
    kill_descendants(1.0)  # normally none left: the attempt stopped them
    for fd, identity in received.items():  # the lock key and slot go now: it is settled
        if _identity(fd) == identity:  # not closed by the attempt's own code already
            os.close(fd)
    idle = by_tick[0] and not stop.is_set()
    _send(link, {"result": result, "idle": idle})
    return idle


def _identity(fd: int) -> tuple[int, int] | None:
    """What descriptor `fd` is open on (device, inode), or None when it is closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _next(link: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The tick's next request for this (idle) supervisor, or None: the tick closed the link or
    died, or a signal asked this supervisor to end."""
    while not _Stop.event.is_set():
        try:
            if not select.select([link], [], [], 0.5)[0]:
                continue
            data, fds, _, _ = socket.recv_fds(link, MAX_REQUEST, 8)
        except InterruptedError:
            continue
        except OSError:
            return None
        if not data:
            return None
        if data[:1] == b"r":
            return json.loads(data[1:]), list(fds)
        for fd in fds:  # nothing else comes with descriptors
            os.close(fd)
    return None


def _receive(link: socket.socket, timeout: float) -> bytes | None:
    """The tick's next short message: None when none came within `timeout` (a frozen tick),
    b"" when the tick is gone."""
    try:
        if not select.select([link], [], [], timeout)[0]:
            return None
        return link.recv(16)
    except OSError:
        return b""


def _send(link: socket.socket, message: dict[str, Any]) -> None:
    """A message to the tick; given up quietly when it is gone or stopped for long."""
    data = json.dumps(message).encode()
    deadline = time.monotonic() + 1.0
    while True:
        try:
            link.send(data)
            return
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
