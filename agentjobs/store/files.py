"""The default backend: a state directory on the local file system.

Layout (format 1):
    format.json      {"format": 1, "created_at": ...}; a newer format is refused
    state.lock       flock target for read-modify-write of the two files below
    applied.json     {"format": 1, "config": {...}, "jobs": {name: AppliedJob}}: one file, so an
                     apply is all-or-nothing
    runtime.json     {"format": 1, "jobs": {name: JobState}, "queue": {id: QueueItem}}: one file,
                     so enqueueing a slot and advancing its job's marker are one write
    records/         YYYY-MM-DD.jsonl run records (records.py)
    logs/            RUN_ID.ATTEMPT.log, one per attempt
    dlq/             ID.json, one per dead letter; never deleted by agentjobs
    locks/           lock-key and concurrency-slot lock files (locks.py)
    outbox/          ID.json, one per notification waiting for delivery (notify.py);
                     outbox/undelivered/ID.json: the ones that failed all their tries (kept)
    progress/        RUN_ID.json, the progress of each running attempt (progress.py); gone
                     once the attempt is settled

Every write is temp file + fsync + os.replace + fsync of the directory (DESIGN.md invariant 4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from agentjobs import locks
from agentjobs import records as records_mod
from agentjobs.clock import parse
from agentjobs.errors import (
    ENVIRONMENT_ERRNOS,
    StateDamagedError,
    StateUnavailableError,
    StateWriteError,
    UserError,
    environment_error,
)
from agentjobs.limits import Allowance
from agentjobs.store import (
    STATE_FORMAT,
    AppliedChange,
    AppliedJob,
    AttemptSummary,
    Claim,
    ClaimRequest,
    JobState,
    OutboxEvent,
    QueueItem,
    QueueState,
    Refusal,
    Runtime,
    held_message,
)
from agentjobs.store.eligibility import claimed, in_order, refusal

# format N -> function turning a format-N state directory into format N+1 (none needed yet)
MIGRATIONS: dict[int, Callable[[Path], None]] = {}


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a mix.

    The temp file is `.NAME.PID.tmp` in the same directory (a dot file: globs such as
    node_exporter's `*.prom` pass it by). The new file is 0600 less the umask, or with `mode`
    exactly `mode` whatever the umask (a file another user reads). Any failure leaves no temp
    file behind; a failure of the environment (a full or read-only disk, permissions, an I/O
    error) raises `StateWriteError` naming `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # the umask applies to os.open's mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)  # the data and its size; the rename below is made durable by
            # the directory fsync
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # never created (a read-only directory...)
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            raise StateWriteError(path, exc) from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise environment_error(path, exc) from None


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    verb: str,
) -> Callable[[Callable[Concatenate[FileStore, _P], _R]], Callable[Concatenate[FileStore, _P], _R]]:
    """A method whose failures of the environment (EACCES, EROFS, ENOSPC, EIO...) become one
    `StateWriteError`/`StateReadError` naming the path (STYLE.md rule 5), not a crash."""

    def wrap(
        method: Callable[Concatenate[FileStore, _P], _R],
    ) -> Callable[Concatenate[FileStore, _P], _R]:
        def guarded(self: FileStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(self, *args, **kwargs)
            except StateWriteError:
                raise
            except OSError as exc:
                if exc.errno not in ENVIRONMENT_ERRNOS:
                    raise
                raise environment_error(self.root, exc, verb) from None

        functools.update_wrapper(guarded, method)
        return guarded

    return wrap


_NONE = type(None)
# The JSON types of each stored field, by its annotation (the dataclasses in store/__init__.py)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, _NONE),
    "int": (int,),
    "int | None": (int, _NONE),
    "bool": (bool,),
    "dict[str, Any] | None": (dict, _NONE),
    "tuple[str, ...]": (list,),
    "tuple[AttemptSummary, ...]": (list,),
}


_Shape = tuple[dict[str, tuple[type, ...]], tuple[str, ...]]  # field types, required fields


def _fields(cls: type) -> _Shape:
    fields = [f for f in dataclasses.fields(cls) if f.init]  # not the derived ones (order)
    types = {f.name: _JSON_TYPES.get(str(f.type), (object,)) for f in fields}
    required = tuple(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    return types, required


_SHAPES: dict[type, _Shape] = {cls: _fields(cls) for cls in (JobState, QueueItem, AttemptSummary)}


def _shape(cls: type, value: Any, where: str, strict: bool) -> str | None:
    """What is wrong with `value` as the JSON of a `cls`, or None. `strict`: unknown keys too.
    (On the tick's path: one pass over the keys present.)"""
    if not isinstance(value, dict):
        return f"{where} is a {type(value).__name__}, not an object"
    types, required = _SHAPES[cls]
    for name, field_value in value.items():
        allowed = types.get(name)
        if allowed is None:
            if strict:
                return f"{where} has an unknown key {name!r}"
        elif not isinstance(field_value, allowed):
            return f"{where}.{name} is a {type(field_value).__name__}"
    for name in required:
        if name not in value:
            return f"{where} has no {name!r}"
    return None


def _runtime_problem(data: Any) -> str | None:
    """What makes `data` not the JSON of a runtime (runtime.json), or None."""
    if not isinstance(data, dict):
        return f"it is a {type(data).__name__}, not an object"
    for section in ("jobs", "queue"):
        if section not in data:
            return f"it has no {section!r}"
        if not isinstance(data[section], dict):
            return f"{section} is a {type(data[section]).__name__}, not an object"
    for name, state in data["jobs"].items():
        problem = _shape(JobState, state, f"jobs.{name}", strict=False)
        if problem is not None:
            return problem
    for key, item in data["queue"].items():
        where = f"queue.{key}"
        problem = _shape(QueueItem, item, where, strict=True)
        if problem is not None:
            return problem
        if item.get("state", "queued") not in ("queued", "running"):
            return f"{where}.state is {item['state']!r}"
        for number, summary in enumerate(item.get("history", ())):
            problem = _shape(AttemptSummary, summary, f"{where}.history[{number}]", strict=True)
            if problem is not None:
                return problem
    if not isinstance(data.get("applied_version", ""), str):
        return "applied_version is not a string"
    holds = data.get("holds", {})
    if not isinstance(holds, dict) or not all(isinstance(v, str) for v in holds.values()):
        return "holds is not an object of times"
    if not isinstance(data.get("ledger", {}), dict):
        return "ledger is not an object"
    return None


def _repair_hint(path: Path) -> str:
    return (
        f"run `agentjobs --state-dir {path.parent} repair` to rebuild it from the run records "
        "(or restore it from a backup)"
    )


_DEAD_LETTER_FIELDS = {"id": str, "job": str, "run_id": str, "status": str, "attempts": list}
_REVIEW_FIELDS = {"id": str, "job": str, "run_id": str, "status": str, "branch": str}


def _copy(runtime: Runtime) -> Runtime:
    """A working copy of `runtime` (its values are frozen; the ledger is plain JSON)."""
    return Runtime(
        dict(runtime.jobs),
        dict(runtime.queue),
        runtime.applied_version,
        dict(runtime.holds),
        json.loads(json.dumps(runtime.ledger)) if runtime.ledger else {},
    )


def _dump(value: Any) -> bytes:
    # no sort_keys: every dict written here is built in a fixed order (and 10,000 specs sort
    # slowly)
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


@dataclasses.dataclass(slots=True)
class FileHold:
    """A claim's hold on the file backend: the flocked lock-key file and a concurrency slot."""

    key: locks.HeldLock
    slot: locks.HeldLock
    lost: None = None  # a flock is never taken over
    reason: str = ""
    settle_window: None = None  # the state is local: settling is retried as long as it takes

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.key.fd, self.slot.fd) if fd >= 0)

    def handoff(self) -> dict[str, Any]:
        return {"key": str(self.key.path), "slot": str(self.slot.path)}

    def let_go(self) -> None:
        self.key.release()

    def done(self) -> None:
        self.key.release()
        self.slot.release()

    def release(self) -> None:
        self.done()

    def started(self, pid: int) -> None:
        pass

    def fenced_reason(self) -> None:
        return None


class FileStore:
    """State in a directory (created mode 0700 on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.locks_dir = root / "locks"
        self._checked = False
        # Threads of one process queue on this mutex instead of polling the flock.
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        # The files as this process last read or wrote them, with their (inode, mtime, size):
        # a transaction re-reads a file only when another process replaced it.
        self._runtime_cache: tuple[tuple[int, int, int], Runtime] | None = None
        self._applied_cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._applied_jobs: tuple[dict[str, Any], dict[str, AppliedJob]] | None = None
        # JSON text of unchanged job states and queue items, reused when writing (by identity:
        # the values are frozen dataclasses)
        # per runtime.json section: fragments by (key, id(value)), and the values themselves
        self._json: dict[str, tuple[dict[tuple[str, int], str], list[Any]]] = {}

    shared = False  # one machine: locks are flocks, the state is not shared between hosts
    one_clock = True
    records_with_state = False  # a supervisor appends its records before it settles

    @property
    def local_dir(self) -> Path:
        return self.root

    def describe(self) -> str:
        return str(self.root)

    def reopened(self) -> FileStore:
        return FileStore(self.root)

    # -- claims ----------------------------------------------------------------------------

    def claim(self, request: ClaimRequest) -> Claim | Refusal | None:
        """`request.first`, then the best runnable item, in one transaction (one write)."""
        with self.transaction(request.timeout) as runtime:
            if request.first is not None and not request.first(runtime):
                return None
            return self._claim_in(runtime, request)

    def _claim_in(self, runtime: Runtime, request: ClaimRequest) -> Claim | Refusal | None:
        applied = self.applied()
        kept = cast("FileHold", request.keep).slot if request.keep is not None else None
        slot = kept
        only = request.only
        busy = {i.lock_key for i in runtime.queue.values() if i.state == "running"}
        if only is not None:
            item = runtime.queue.get(only)
            if item is None or item.state != "queued":
                return None
            why = self._refusal(item, applied, runtime, request).reason
            if why is not None:
                return Refusal(why.removeprefix("host:").strip())
            candidates: Iterable[QueueItem] = [item]
        else:
            candidates = in_order(
                [
                    i
                    for i in runtime.queue.values()
                    if i.state == "queued" and i.not_before <= request.now
                ]
            )
        for item in candidates:
            if item.lock_key in busy and only is None:
                continue
            allowed = self._refusal(item, applied, runtime, request)
            if allowed.reason is not None:
                continue
            if slot is None:
                slot = locks.try_slot(self.locks_dir, request.slots)
                if slot is None:
                    return None if only is None else Refusal("every concurrency slot is in use")
            key = locks.try_key(self.locks_dir, item.lock_key)
            if key is None:
                busy.add(item.lock_key)
                if only is not None:
                    if slot is not kept:
                        slot.release()
                    return Refusal(self.holder_message(item.lock_key, runtime))
                continue
            key.note(request.note(item))
            running = dataclasses.replace(
                item,
                state=QueueState.RUNNING,
                started_at=request.now,
                host=request.host,
                pid=request.pid,
                # where this attempt's records will be: recovery reads from here (a stat)
                records_at=self.records_mark(parse(request.now)),
                **claimed(item, applied[item.job], allowed, request, runtime.ledger),
            )
            runtime.queue[item.id] = running
            state = runtime.jobs.get(item.job)
            if state is not None:
                runtime.jobs[item.job] = dataclasses.replace(
                    state, last_started=request.now, last_run_id=item.run_id
                )
            return Claim(running, applied[item.job], FileHold(key, slot))
        if slot is not None and slot is not kept:
            slot.release()
        return None

    @staticmethod
    def _refusal(
        item: QueueItem, applied: Mapping[str, AppliedJob], runtime: Runtime, request: ClaimRequest
    ) -> Allowance:
        return refusal(
            applied.get(item.job),
            runtime.jobs.get(item.job),
            runtime.holds,
            request,
            other_hosts=False,
            ledger=runtime.ledger,
        )

    def holder_message(self, key: str, runtime: Runtime) -> str:
        """Who holds lock key `key`: the running item, or what the lock file notes."""
        running = [i for i in runtime.queue.values() if i.state == "running" and i.lock_key == key]
        if running:
            return held_message(key, running[0])
        holder = locks.holder(locks.key_file(self.locks_dir, key))
        return held_message(key, holder or "another process")

    def hold_from(self, handoff: Mapping[str, Any], fds: Sequence[int]) -> FileHold:
        return FileHold(
            locks.HeldLock(Path(handoff["key"]), fds[0]),
            locks.HeldLock(Path(handoff["slot"]), fds[1]),
        )

    def orphaned(self, item: QueueItem) -> bool:
        """The key is held from the claim until the attempt is settled, by the claiming tick
        and then by the attempt's supervisor (and the attempt's processes): a free key means
        nobody is left to finish it, whatever host name or pid the item names (a container
        restarted under a new name, a reused pid)."""
        return locks.is_free(locks.key_file(self.locks_dir, item.lock_key))

    def see_host(self, host: str, labels: Iterable[str]) -> None:
        pass  # one host

    def prepare_keys(self, keys: Iterable[str]) -> None:
        locks.prepare_keys(self.locks_dir, keys)

    def hosts(self) -> list[dict[str, Any]]:
        return []  # one host, not listed

    def host_notes(self) -> dict[str, list[tuple[str, str]]]:
        return {}  # one host: what it skips stays queued for it, with its reason in `run`

    def orphans_possible(self, runtime: Runtime) -> bool:
        return True  # one host: every pass looks (a flock test per running item)

    def close_thread(self) -> None:
        pass  # no connections

    @_guarded("read")
    def exists(self) -> bool:
        return (self.root / "format.json").is_file()

    # -- format ----------------------------------------------------------------------------

    @_guarded("read")
    def _check_format(self) -> None:
        if self._checked:
            return
        try:
            raw = (self.root / "format.json").read_bytes()
        except FileNotFoundError:
            self._checked = True
            return
        try:
            version = int(json.loads(raw)["format"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{self.root}/format.json is damaged ({exc}); restore it from a backup"
            ) from None
        if version > STATE_FORMAT:
            raise UserError(
                f"state directory {self.root} has format {version}, newer than this agentjobs "
                f"understands ({STATE_FORMAT}); upgrade agentjobs"
            )
        while version < STATE_FORMAT:
            MIGRATIONS[version](self.root)
            version += 1
            atomic_write(self.root / "format.json", _dump({"format": version}))
        self._checked = True

    @_guarded("write")
    def _ensure(self) -> None:
        if not self.root.exists():
            try:
                self.root.mkdir(mode=0o700, parents=True)
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno in ENVIRONMENT_ERRNOS:
                    raise environment_error(self.root, exc) from None
                raise UserError(
                    f"cannot create state directory {self.root}: {exc.strerror}"
                ) from None
        elif not self.root.is_dir():
            raise UserError(f"state directory {self.root} is not a directory")
        self._check_format()
        if not self.exists():
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            atomic_write(
                self.root / "format.json", _dump({"format": STATE_FORMAT, "created_at": stamp})
            )

    # -- lock ------------------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        # Threads of this process take turns on the mutex; processes on the flock. The
        # descriptor stays open between locks (flock/unlock, not open/close, per transaction).
        with self._mutex:
            self._ensure()
            if self._lock_fd is None:
                path = self.root / "state.lock"
                try:
                    self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError as exc:
                    raise environment_error(path, exc) from None
            fd = self._lock_fd
            deadline = time.monotonic() + timeout
            delay = 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                        raise StateUnavailableError(
                            f"state directory {self.root} is locked by another agentjobs process "
                            f"(pid {holder}) for more than {timeout:g}s; try again when it is done"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.02)
            try:
                try:
                    os.pwrite(fd, f"{os.getpid():>12}\n".encode(), 0)  # fixed width
                except OSError as exc:
                    raise environment_error(self.root / "state.lock", exc) from None
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # -- reads -----------------------------------------------------------------------------

    def _read(self, name: str) -> dict[str, Any]:
        self._check_format()
        path = self.root / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise StateDamagedError(f"{path} is damaged ({exc}); {self._advice(path)}") from None
        if name == "runtime.json":
            problem = _runtime_problem(data)
        elif not isinstance(data, dict):
            problem = f"it is a {type(data).__name__}, not an object"
        elif not isinstance(data.get("jobs", {}), dict):
            problem = "jobs is not an object"
        elif not isinstance(data.get("config", {}), dict):
            problem = "config is not an object"
        else:
            problem = None
        if problem is not None:
            raise StateDamagedError(f"{path} is damaged ({problem}); {self._advice(path)}")
        return data

    @staticmethod
    def _advice(path: Path) -> str:
        if path.name == "runtime.json":
            return _repair_hint(path)
        return "restore it from a backup"

    def _read_jobs(self, name: str) -> dict[str, Any]:
        jobs: dict[str, Any] = self._read(name).get("jobs", {})
        return jobs

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _applied_file(self) -> dict[str, Any]:
        path = self.root / "applied.json"
        signature = self._signature(path)
        cached = self._applied_cache
        if signature is not None and cached is not None and cached[0] == signature:
            return cached[1]
        data = self._read("applied.json")
        if signature is not None:
            self._applied_cache = (signature, data)
        return data

    @_guarded("read")
    def applied(self) -> dict[str, AppliedJob]:
        data = self._applied_file()
        cached = self._applied_jobs
        if cached is None or cached[0] is not data:
            try:
                jobs = {n: AppliedJob.from_dict(n, d) for n, d in data.get("jobs", {}).items()}
                for job in jobs.values():
                    if not isinstance(job.spec, dict):
                        raise TypeError(f"the spec of {job.name!r} is not an object")
            except (KeyError, TypeError, AttributeError) as exc:
                path = self.root / "applied.json"
                raise StateDamagedError(
                    f"{path} is damaged (a job {exc}); restore it from a backup, or apply the "
                    "job files again in a new state directory"
                ) from None
            cached = self._applied_jobs = (data, jobs)
        return dict(cached[1])

    @_guarded("read")
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self._applied_file().get("config", {})
        return config

    @_guarded("read")
    def applied_version(self) -> str:
        signature = self._signature(self.root / "applied.json")
        return "" if signature is None else "-".join(map(str, signature))

    @_guarded("read")
    def runtime(self) -> Runtime:
        """The job states and the queue. A missing runtime.json after an apply, or one of the
        wrong shape, is refused (`StateDamagedError`): starting over from nothing would drop
        pending retries and run every job again at once (issue 10, item 9)."""
        return _copy(self._current())  # callers change theirs; the cached one stays as on disk

    @_guarded("read")
    def queue_item(self, item_id: str) -> QueueItem | None:
        """A stat of runtime.json, and a read only when another process replaced it."""
        return self._current().queue.get(item_id)

    def _current(self) -> Runtime:
        """runtime.json as last read (read again when its signature changed): not a copy."""
        path = self.root / "runtime.json"
        signature = self._signature(path)
        cached = self._runtime_cache
        if signature is not None and cached is not None and cached[0] == signature:
            current = cached[1]
        else:
            if signature is None and (self.root / "applied.json").exists():
                raise StateDamagedError(
                    f"{path} is missing, but jobs were applied to this state directory; "
                    f"{_repair_hint(path)}"
                )
            data = self._read("runtime.json")
            current = Runtime(
                jobs={n: JobState.from_dict(d) for n, d in data.get("jobs", {}).items()},
                queue={i: QueueItem.from_dict(d) for i, d in data.get("queue", {}).items()},
                applied_version=data.get("applied_version", ""),
                holds=dict(data.get("holds", {})),
                ledger=dict(data.get("ledger", {})),
            )
            if signature is not None:
                self._runtime_cache = (signature, current)
        return current

    def runtime_problem(self) -> str | None:
        """Why runtime.json cannot be used (missing after an apply, damaged), or None."""
        self._runtime_cache = None
        try:
            self.runtime()
        except StateDamagedError as exc:
            return str(exc)
        return None

    @_guarded("write")
    def replace_runtime(self, runtime: Runtime, now: datetime) -> Path | None:
        """Write `runtime` as runtime.json (for `repair`; hold the state lock). The file it
        replaces, if any, is kept as `runtime.json.damaged-<time>`; returns that path."""
        path = self.root / "runtime.json"
        target = path.with_name(f"runtime.json.damaged-{now:%Y%m%dT%H%M%SZ}")
        if target.exists():
            target = target.with_name(f"{target.name}-{os.getpid()}")
        kept: Path | None = target
        try:
            os.link(path, target)  # the old bytes under a second name: no copy
        except FileNotFoundError:
            kept = None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            atomic_write(target, path.read_bytes())  # a file system without hard links
        self._json.clear()
        atomic_write(path, self._runtime_bytes(runtime))
        self._runtime_cache = None
        return kept

    # -- writes ----------------------------------------------------------------------------

    def _fragments(self, section: str, entries: dict[str, Any]) -> str:
        """`"key":{json}` for every entry, joined; fragments of unchanged entries (the same
        frozen object under the same key) are reused from the last write. The lookups run in C
        (`map`): with 1,000 jobs a write costs a few hundred microseconds less (the tick writes
        once per attempt)."""
        cache, _alive = self._json.get(section, ({}, []))
        values = list(entries.values())
        keys = list(zip(entries, map(id, values), strict=True))
        parts = list(map(cache.get, keys))
        if None in parts:
            for n, part in enumerate(parts):
                if part is None:
                    key, value = keys[n][0], values[n]
                    parts[n] = (
                        f"{json.dumps(key)}:{json.dumps(value.to_dict(), separators=(',', ':'))}"
                    )
        done = cast("list[str]", parts)
        # the values stay referenced with their fragments: an id is never reused meanwhile
        self._json[section] = (dict(zip(keys, done, strict=True)), values)
        return ",".join(done)

    def _runtime_bytes(self, runtime: Runtime) -> bytes:
        jobs = self._fragments("jobs", runtime.jobs)
        queue = self._fragments("queue", runtime.queue)
        return (
            f'{{"format":{STATE_FORMAT},"applied_version":{json.dumps(runtime.applied_version)},'
            f'"jobs":{{{jobs}}},"queue":{{{queue}}},"holds":{json.dumps(runtime.holds)}'
            + (f',"ledger":{json.dumps(runtime.ledger)}' if runtime.ledger else "")
            + "}\n"
        ).encode()

    @contextmanager
    def transaction(self, timeout: float) -> Iterator[Runtime]:
        with self.lock(timeout):
            runtime = self.runtime()
            before = (
                dict(runtime.jobs),
                dict(runtime.queue),
                runtime.applied_version,
                dict(runtime.holds),
                json.dumps(runtime.ledger, sort_keys=True) if runtime.ledger else "",
            )
            yield runtime
            after = (
                runtime.jobs,
                runtime.queue,
                runtime.applied_version,
                runtime.holds,
                json.dumps(runtime.ledger, sort_keys=True) if runtime.ledger else "",
            )
            if after != before:  # frozen values: unchanged ones compare by identity first
                path = self.root / "runtime.json"
                atomic_write(path, self._runtime_bytes(runtime))
                signature = self._signature(path)
                if signature is not None:
                    self._runtime_cache = (signature, _copy(runtime))

    @_guarded("write")
    def write_applied(self, change: AppliedChange) -> None:
        self._ensure()
        runtime_path = self.root / "runtime.json"
        if not runtime_path.exists():
            # Before the first applied.json: a runtime.json exists whenever applied.json does
            # (a missing one means damage). The transaction around this call writes the real
            # one; a crash in between leaves an empty one, which the next tick reconciles.
            atomic_write(runtime_path, self._runtime_bytes(Runtime()))
        applied_file = self._read("applied.json")
        applied = applied_file.get("jobs", {})
        config = applied_file.get("config", {}) if change.config is None else dict(change.config)
        for name in change.remove:
            applied.pop(name, None)
        for name, job in change.put.items():
            applied[name] = job.to_dict()
        atomic_write(
            self.root / "applied.json",
            _dump({"format": STATE_FORMAT, "config": config, "jobs": applied}),
        )

    # -- records, logs, dead letters -------------------------------------------------------

    def append_records(self, records: Iterable[Mapping[str, Any]], moment: datetime) -> None:
        records_mod.append(self.root / "records", records, moment)

    def records(
        self, since: datetime | None = None, newest_first: bool = False
    ) -> Iterator[dict[str, Any]]:
        return records_mod.read_all(self.root / "records", since, newest_first)

    @_guarded("read")
    def records_mark(self, moment: datetime) -> str | None:
        """`day:size` of the day file a record appended at `moment` goes to (one `stat`)."""
        day, size = records_mod.mark(self.root / "records", moment)
        return f"{day}:{size}"

    @_guarded("read")
    def finished_records(
        self, items: Iterable[QueueItem], now: datetime
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """One pass over the records written since the earliest claim (issue 10, item 7);
        an item without a mark (a state from before marks) is looked for from the day before
        it started."""
        wanted: dict[tuple[str, int], tuple[str, int]] = {}
        for item in items:
            day, _, size = (item.records_at or "").partition(":")
            if day and size.isdigit():
                wanted[(item.run_id, item.attempt)] = (day, int(size))
            else:
                started = datetime.fromisoformat(item.started_at) if item.started_at else now
                wanted[(item.run_id, item.attempt)] = (
                    f"{(started - timedelta(days=1)).astimezone(UTC):%Y-%m-%d}",
                    0,
                )
        return records_mod.find_finished(self.root / "records", wanted)

    def log_path(self, run_id: str, attempt: int) -> Path:
        """Where the attempt's log goes; the logs directory is created here, so a full or
        read-only disk is one `StateWriteError` before the attempt starts."""
        folder = self.root / "logs"
        try:
            if not folder.is_dir() and self.root.is_dir():
                folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise environment_error(folder, exc) from None
        return records_mod.log_path(folder, run_id, attempt)

    @_guarded("write")
    def count(self, name: str, by: int = 1) -> None:
        """Add to a counter in counters.json (under the state lock: read, add, replace)."""
        with self.lock(30.0):
            values = self.counters()
            values[name] = values.get(name, 0) + by
            atomic_write(self.root / "counters.json", _dump(values))

    @_guarded("read")
    def counters(self) -> dict[str, int]:
        path = self.root / "counters.json"
        try:
            loaded: dict[str, int] = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(loaded, dict) or not all(isinstance(v, int) for v in loaded.values()):
            raise StateDamagedError(
                f"{path} is damaged (not an object of counts); delete it to count from zero "
                "again, or restore it from a backup"
            )
        return loaded

    @_guarded("write")
    def put_dead_letter(self, entry: Mapping[str, Any]) -> None:
        self._put_entry("dlq", entry)

    @_guarded("read")
    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter; one that cannot be read or is damaged is skipped with a warning
        naming it, so the others still list (issue 10, item 10)."""
        return self._entries("dlq", "a dead letter", _DEAD_LETTER_FIELDS)

    @_guarded("read")
    def dead_letter(self, entry_id: str) -> dict[str, Any] | None:
        return self._entry("dlq", entry_id, _DEAD_LETTER_FIELDS)

    @_guarded("write")
    def put_review(self, entry: Mapping[str, Any]) -> None:
        self._put_entry("reviews", entry)

    @_guarded("read")
    def reviews(self) -> list[dict[str, Any]]:
        return self._entries("reviews", "a review", _REVIEW_FIELDS)

    @_guarded("read")
    def review(self, entry_id: str) -> dict[str, Any] | None:
        return self._entry("reviews", entry_id, _REVIEW_FIELDS)

    def hold_key(self, key: str, note: str, seconds: float) -> Callable[[], None] | None:
        held = locks.try_key(self.locks_dir, key)  # a flock: gone with this process
        if held is None:
            return None
        held.note(note)
        return held.release

    def _put_entry(self, section: str, entry: Mapping[str, Any]) -> None:
        """A file per entry (dead letters, reviews): `<state>/<section>/<id>.json`."""
        self._ensure()
        folder = self.root / section
        folder.mkdir(mode=0o700, exist_ok=True)
        atomic_write(folder / f"{entry['id']}.json", _dump(dict(entry)))

    def _entries(
        self, section: str, what: str, required: Mapping[str, type]
    ) -> list[dict[str, Any]]:
        folder = self.root / section
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                out.append(self._load_entry(path, required))
            except FileNotFoundError:
                continue  # replaced or removed meanwhile
            except (StateDamagedError, StateWriteError) as exc:
                print(f"agentjobs: warning: skipped {what}: {exc}", file=sys.stderr)
        return out

    def _entry(
        self, section: str, entry_id: str, required: Mapping[str, type]
    ) -> dict[str, Any] | None:
        if not entry_id or "/" in entry_id or entry_id.startswith("."):
            return None
        try:
            return self._load_entry(self.root / section / f"{entry_id}.json", required)
        except FileNotFoundError:
            return None

    @staticmethod
    def _load_entry(path: Path, required: Mapping[str, type]) -> dict[str, Any]:
        try:
            loaded: Any = json.loads(path.read_bytes())
        except ValueError as exc:
            raise StateDamagedError(
                f"{path} is damaged ({exc or 'empty'}); restore it from a backup"
            ) from None
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise environment_error(path, exc, "read") from None
        problem = None
        if not isinstance(loaded, dict):
            problem = f"it is a {type(loaded).__name__}, not an object"
        else:
            for key, kind in required.items():
                if not isinstance(loaded.get(key), kind):
                    problem = f"{key!r} is missing or not a {kind.__name__}"
                    break
        if problem is not None:
            raise StateDamagedError(f"{path} is damaged ({problem}); restore it from a backup")
        return dict(loaded)

    # -- the notification outbox -----------------------------------------------------------

    @_guarded("write")
    def outbox_put(self, events: Iterable[OutboxEvent]) -> None:
        folder = self.root / "outbox"
        for event in events:
            if not folder.is_dir():
                self._ensure()
                folder.mkdir(mode=0o700, exist_ok=True)
            atomic_write(folder / f"{event.id}.json", _dump(event.to_dict()))

    def _outbox_read(self, folder: Path, limit: int) -> list[OutboxEvent]:
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for name in names[:limit]:
            try:
                out.append(OutboxEvent.from_dict(json.loads((folder / name).read_bytes())))
            except FileNotFoundError:
                continue  # delivered by another process meanwhile
            except (ValueError, TypeError) as exc:
                raise UserError(
                    f"{folder / name} is damaged ({exc}); move it out of the way"
                ) from None
        return out

    def outbox_pending(self, limit: int) -> list[OutboxEvent]:
        return self._outbox_read(self.root / "outbox", limit)

    def outbox_undelivered(self, limit: int) -> list[OutboxEvent]:
        return self._outbox_read(self.root / "outbox" / "undelivered", limit)

    def _outbox_event(self, event_id: str) -> OutboxEvent | None:
        if not event_id.isalnum():
            raise ValueError(f"not an outbox event id: {event_id!r}")
        try:
            raw = (self.root / "outbox" / f"{event_id}.json").read_bytes()
        except FileNotFoundError:
            return None
        return OutboxEvent.from_dict(json.loads(raw))

    @_guarded("write")
    def outbox_done(self, event_id: str) -> None:
        if not event_id.isalnum():
            raise ValueError(f"not an outbox event id: {event_id!r}")
        (self.root / "outbox" / f"{event_id}.json").unlink(missing_ok=True)

    @_guarded("write")
    def outbox_retry(self, event_id: str, next_at: str, error: str) -> None:
        event = self._outbox_event(event_id)
        if event is not None:
            changed = dataclasses.replace(
                event, tries=event.tries + 1, next_at=next_at, error=error
            )
            atomic_write(self.root / "outbox" / f"{event_id}.json", _dump(changed.to_dict()))

    @_guarded("write")
    def outbox_dead(self, event_id: str, error: str) -> None:
        event = self._outbox_event(event_id)
        if event is None:
            return
        folder = self.root / "outbox" / "undelivered"
        folder.mkdir(mode=0o700, exist_ok=True)
        dead = dataclasses.replace(event, tries=event.tries + 1, error=error)
        atomic_write(folder / f"{event_id}.json", _dump(dead.to_dict()))  # kept before it goes
        (self.root / "outbox" / f"{event_id}.json").unlink(missing_ok=True)

    def outbox_counts(self) -> tuple[int, int]:
        counts = []
        for folder in (self.root / "outbox", self.root / "outbox" / "undelivered"):
            try:
                with os.scandir(folder) as entries:
                    counts.append(sum(e.name.endswith(".json") for e in entries))
            except FileNotFoundError:
                counts.append(0)
        return counts[0], counts[1]

    # -- running attempts' progress (progress.py) -------------------------------------------

    def _progress_path(self, run_id: str) -> Path:
        if not run_id.isalnum():
            raise ValueError(f"not a run id: {run_id!r}")
        return self.root / "progress" / f"{run_id}.json"

    @_guarded("write")
    def put_progress(self, run_id: str, attempt: int, data: Mapping[str, Any]) -> None:
        """One small file per running attempt, replaced atomically (a reader sees the old
        progress or the new one)."""
        path = self._progress_path(run_id)
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(path, _dump({**data, "attempt": attempt}))

    @_guarded("read")
    def progress(self) -> dict[str, dict[str, Any]]:
        """Every progress file; one that is damaged or removed meanwhile is skipped (progress
        is for showing, and its attempt shows as running all the same)."""
        folder = self.root / "progress"
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        found = {}
        for name in names:
            if name.startswith("."):
                continue  # a write in flight (atomic_write's temp file)
            try:
                data = json.loads((folder / name).read_bytes())
            except (FileNotFoundError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("attempt"), int):
                found[name.removesuffix(".json")] = data
        return found

    @_guarded("write")
    def clear_progress(self, run_id: str, attempt: int) -> None:
        path = self._progress_path(run_id)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except ValueError:
            data = None  # damaged: nobody's progress
        if (
            isinstance(data, dict)
            and isinstance(data.get("attempt"), int)
            and data["attempt"] > attempt
        ):
            return  # a later attempt's
        path.unlink(missing_ok=True)

    # -- side files and record days (metrics cache, notifier counters) ---------------------

    @_guarded("write")
    def prune_logs(self, older_than: float, keep: set[str]) -> int:
        return records_mod.prune_logs(self.root / "logs", older_than, keep)

    @_guarded("write")
    def archive_records(self, before_day: str) -> int:
        """Move record files of days before `before_day` (YYYY-MM-DD) into
        records/archive/DAY.jsonl.gz (written atomically before the original goes)."""
        import gzip

        archive = self.root / "records" / "archive"
        moved = 0
        for path in records_mod.day_files(self.root / "records"):
            if path.stem >= before_day:
                continue
            archive.mkdir(mode=0o700, exist_ok=True)
            atomic_write(archive / f"{path.stem}.jsonl.gz", gzip.compress(path.read_bytes()))
            path.unlink()
            moved += 1
        return moved

    @_guarded("read")
    def read_json(self, name: str) -> Any:
        """The JSON side file `name` in the state directory; None when it is missing or damaged
        (side files are caches and counters: a damaged one is rebuilt, not an error)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a side file name: {name!r}")
        try:
            return json.loads((self.root / name).read_bytes())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    @_guarded("write")
    def write_json(self, name: str, value: Any) -> None:
        """Replace the side file `name` atomically (the state directory must exist)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a side file name: {name!r}")
        atomic_write(self.root / name, _dump(value))

    @_guarded("read")
    def record_days(self) -> dict[str, tuple[int, int]]:
        """Each UTC day that has a record file -> (size, mtime_ns) of that file."""
        days = {}
        for path in records_mod.day_files(self.root / "records"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # removed by retention meanwhile
            days[path.stem] = (st.st_size, st.st_mtime_ns)
        return days

    def day_records(self, day: str) -> Iterator[dict[str, Any]]:
        """The records of one UTC day (`YYYY-MM-DD`), oldest first."""
        return records_mod.read_file(self.root / "records" / f"{day}.jsonl")

    @_guarded("read")
    def day_records_after(self, day: str, mark: int) -> tuple[list[dict[str, Any]], int]:
        """The records of one UTC day appended after `mark` (0, or a mark this returned), oldest
        first, and the mark to pass next time (a byte offset: the day file only grows)."""
        return records_mod.read_after(self.root / "records" / f"{day}.jsonl", mark)
