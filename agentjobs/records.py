"""JSONL run records: append-only, one file per UTC day, made to be committed or shipped.

Each record is one JSON object on one line, appended with a single `write()` on an `O_APPEND`
descriptor and fsynced (DESIGN.md invariant 4): concurrent writers never interleave inside a line,
and a crash leaves at most a torn last line, which readers skip with a warning. The fields are
documented in `schema/run-record.schema.json`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentjobs.errors import environment_error

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
EVENTS = (
    "attempt_started",
    "attempt_finished",
    "slot_skipped",
    "dead_lettered",
    "replayed",
    "resolved",
    "cancelled",
    "reviewed",
)


def new_ulid(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, Crockford base32 (sorts by time)."""
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def day_file(records_dir: Path, moment: datetime) -> Path:
    return records_dir / f"{moment.astimezone(UTC):%Y-%m-%d}.jsonl"


def encode(record: Mapping[str, Any]) -> bytes:
    line = json.dumps(record, separators=(",", ":"), sort_keys=False, ensure_ascii=False)
    return (line + "\n").encode()


# The day file stays open between appends (one open per day, not two per attempt). Appends of
# one process go through this lock; O_APPEND keeps other processes' lines whole.
_open: dict[str, tuple[int, int]] = {}  # path -> (descriptor, inode)
_open_lock = threading.Lock()


def _descriptor(path: Path) -> int:
    """The open descriptor of the day file (read and append: the tail is checked)."""
    key = str(path)
    cached = _open.get(key)
    if cached is not None:
        try:
            if os.stat(path).st_ino == cached[1]:
                return cached[0]
        except FileNotFoundError:
            pass  # removed (retention, a person): open it anew
    _forget()  # one day's file at a time
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    _open[key] = (fd, os.fstat(fd).st_ino)
    return fd


def _forget() -> None:
    for fd, _ in _open.values():
        os.close(fd)
    _open.clear()


def _torn_tail(fd: int) -> bool:
    """Whether the file does not end with a newline: a crash (or a full disk another process
    did not clean up) left a torn last line that the next record must not be glued onto."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def after_fork() -> None:
    """In a forked supervisor: forget the descriptors and the lock of the process it came
    from (another thread may have held the lock at the fork; the descriptors are closed)."""
    global _open_lock
    _open.clear()
    _open_lock = threading.Lock()


def append(records_dir: Path, records: Iterable[Mapping[str, Any]], moment: datetime) -> None:
    """Append whole lines to the day's file in one write, then fdatasync.

    Never after a torn tail (issue 10, item 1): each append checks that the file ends with a
    newline (one fstat and a one-byte pread; another process may have died mid-append since
    our last one) and otherwise starts its write with one, so the fragment stays a line of
    its own that readers skip.
    (Ending the fragment is safe against a concurrent appender; cutting it off is not: it
    could be the first part of another process's write in progress.) A short write (a full
    disk) is cut back to where it began, so it leaves no fragment, and raises
    `StateWriteError`, as does any write failure of the environment (ENOSPC, EIO, EROFS...).
    """
    data = b"".join(encode(r) for r in records)
    if not data:
        return
    path = day_file(records_dir, moment)
    with _open_lock:
        try:
            if str(path) not in _open:
                records_dir.mkdir(parents=True, exist_ok=True)
            fd = _descriptor(path)
            if _torn_tail(fd):
                data = b"\n" + data
            try:
                written = os.write(fd, data)
            except OSError:
                _forget()  # check the tail again next time
                raise
            if written != len(data):  # a short write on a regular file: the disk is full
                _cut_back(fd, written)
                _forget()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            os.fdatasync(fd)  # data and file size (metadata such as mtime may lag: harmless)
        except OSError as exc:
            raise environment_error(path, exc) from None


def _cut_back(fd: int, written: int) -> None:
    """Remove the `written` bytes of a short write from the end of the file, unless another
    process has appended since (then the end is not ours to cut)."""
    end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: our write ended here
    if os.fstat(fd).st_size == end:
        os.ftruncate(fd, end - written)


def read_file(path: Path, warn: bool = True) -> Iterator[dict[str, Any]]:
    """Records in one file, oldest first; a torn or damaged line is skipped with a warning."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise environment_error(path, exc, "read") from None
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if warn:
                print(
                    f"agentjobs: warning: {path}:{number}: skipped a damaged record line",
                    file=sys.stderr,
                )
            continue
        if isinstance(record, dict):
            yield record


def mark(records_dir: Path, moment: datetime) -> tuple[str, int]:
    """Where a record appended at `moment` goes: its day and the day file's size now (one
    `stat`). Every record appended later for that moment or after lies at or after it."""
    day = f"{moment.astimezone(UTC):%Y-%m-%d}"
    try:
        return day, os.stat(day_file(records_dir, moment)).st_size
    except FileNotFoundError:
        return day, 0
    except OSError as exc:
        raise environment_error(records_dir, exc, "read") from None


# A short write cut back by another process (`_cut_back`) may move the end of a day file back
# below a mark taken while that write stood: searches start this much earlier.
MARK_SLACK = 1 << 20
_CHUNK = 8 << 20


def find_finished(
    records_dir: Path, wanted: Mapping[tuple[str, int], tuple[str, int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """The `attempt_finished` records of the attempts in `wanted` ((run id, attempt) -> the
    `mark()` taken when the attempt was claimed), found in ONE pass over the bytes written
    since the earliest mark (issue 10, item 7): the bytes are searched for the run ids with
    one regular expression, in chunks (constant memory), and only the lines that name one
    are parsed. Its cost grows with what was written while these attempts ran, never with
    the day's or the store's history.

    Records of a day before a mark's day are not searched: an attempt's records are appended
    after its claim with the clock of the moment (a clock set back across midnight while an
    attempt runs is the one case this misses; recovery then records the attempt `lost`)."""
    if not wanted:
        return {}
    start_day, start_offset = min(wanted.values())
    ids = sorted({run_id for run_id, _ in wanted})
    # no leading quote: a pattern that starts with a rarer byte than `"` is scanned for faster
    # (~25%); a line it matches is parsed and checked anyway
    pattern = re.compile(
        rb'run_id":\s*"(?:' + b"|".join(re.escape(i.encode()) for i in ids) + rb')"'
    )
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in day_files(records_dir):
        if path.stem < start_day:
            continue
        offset = max(0, start_offset - MARK_SLACK) if path.stem == start_day else 0
        for line in _lines_matching(path, offset, pattern):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line (a crash mid-append)
            if not isinstance(record, dict) or record.get("event") != "attempt_finished":
                continue
            run_id, attempt = record.get("run_id"), record.get("attempt")
            if not isinstance(run_id, str) or not isinstance(attempt, int):
                continue
            if (run_id, attempt) in wanted:
                found.setdefault((run_id, attempt), record)  # duplicates agree (a crash)
    return found


def _lines_matching(path: Path, offset: int, pattern: re.Pattern[bytes]) -> Iterator[bytes]:
    """The lines of `path` from `offset` on (the first one possibly partial) that `pattern`
    matches, read in chunks and searched in place (no copy of a chunk); only the lines that
    match are cut out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # removed meanwhile (retention)
    except OSError as exc:
        raise environment_error(path, exc, "read") from None
    try:
        carry = b""  # the start of a line the previous chunk ended in
        while True:
            try:
                chunk = os.pread(fd, _CHUNK, offset)
            except OSError as exc:
                raise environment_error(path, exc, "read") from None
            offset += len(chunk)
            if not chunk:  # the end: a last line without its newline (torn)
                yield from _matching(carry, 0, len(carry), pattern)
                return
            first = chunk.find(b"\n") + 1
            if first == 0:  # no line ends in this chunk
                carry += chunk
                continue
            yield from _matching(carry + chunk[:first], 0, len(carry) + first, pattern)
            last = chunk.rfind(b"\n") + 1
            yield from _matching(chunk, first, last, pattern)
            carry = chunk[last:]
    finally:
        os.close(fd)


def _matching(data: bytes, begin: int, end: int, pattern: re.Pattern[bytes]) -> Iterator[bytes]:
    """The whole lines of `data[begin:end]` (which starts and ends at line boundaries) that
    `pattern` matches."""
    for match in pattern.finditer(data, begin, end):
        newline = data.rfind(b"\n", begin, match.start())
        start = newline + 1 if newline >= 0 else begin
        stop = data.find(b"\n", match.end(), end)
        yield data[start : stop if stop >= 0 else end]


def day_files(records_dir: Path) -> list[Path]:
    try:
        if not records_dir.is_dir():
            return []
        return sorted(p for p in records_dir.iterdir() if p.suffix == ".jsonl")
    except OSError as exc:
        raise environment_error(records_dir, exc, "read") from None


def read_all(
    records_dir: Path, since: datetime | None = None, newest_first: bool = False
) -> Iterator[dict[str, Any]]:
    """Every record, oldest first or newest first; files whose day ends before `since` are not
    opened, so `history --limit 20` reads the newest day files only."""
    floor = f"{since.astimezone(UTC):%Y-%m-%d}" if since else ""
    files = [p for p in day_files(records_dir) if p.stem >= floor]
    if not newest_first:
        for path in files:
            yield from read_file(path)
        return
    for path in reversed(files):
        yield from reversed(list(read_file(path)))


def log_path(logs_dir: Path, run_id: str, attempt: int) -> Path:
    return logs_dir / f"{run_id}.{attempt}.log"


def prune_logs(logs_dir: Path, older_than: float, keep: set[str]) -> int:
    """Delete attempt logs last written before `older_than` (epoch seconds), except those of the
    runs in `keep`. Returns how many were deleted."""
    removed = 0
    if not logs_dir.is_dir():
        return 0
    for entry in os.scandir(logs_dir):
        if entry.name.split(".", 1)[0] in keep or not entry.name.endswith(".log"):
            continue
        try:
            if entry.stat().st_mtime < older_than:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def read_after(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The records of one file from byte `offset` on (an offset this returned before) and the
    offset after the last whole line: a reader that keeps a parsed day file reads only what
    was appended since (the dashboard's day cache, query.DayCache). A line still being
    written waits for the next call; a torn or damaged line is skipped."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise environment_error(path, exc, "read") from None
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line (a crash mid-append): `read_file` warns about it
        if isinstance(record, dict):
            out.append(record)
    return out, offset + end
