"""An attempt's log file: written with a size cap, read in constant memory (issue 10, item 13).

`CappedLog` keeps the first half of `max_log_size` (the head: how the attempt started) and a
rolling last half (the tail: how it ended), with one marker line between saying how many bytes
were left out. Memory stays constant (64 KiB copies): the tail is written to the file as it
arrives, and whenever the bytes after the head reach a whole extra half of the cap, the last half
is copied down behind the head and the file truncated. So the file never exceeds 1.5x the cap
while the attempt runs, and is trimmed to the cap (plus the marker) when it ends. A reader
following the log (`logs --follow`) may see the file shrink at those moments.

`copy_to` and `tail_start` read a log in chunks: `agentjobs logs` of a 2 GiB log uses as little
memory as one of 2 KiB.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 65536
DEFAULT_MAX_LOG_SIZE = 64 * 1024 * 1024  # bytes per attempt log (`max_log_size`)


def marker(omitted: int, cap: int) -> bytes:
    from agentjobs.sizes import format_size

    return (
        f"\n[agentjobs] log capped at {format_size(cap)} (max_log_size): {omitted} bytes "
        "omitted here; the first and the last half are kept\n"
    ).encode()


class CappedLog:
    """Appends an attempt's output to `log` (an open, append-mode file of `path`) keeping at
    most `cap` bytes of it (None: no cap). `finish()` trims the file at the end."""

    def __init__(self, log: BinaryIO, path: Path, cap: int | None) -> None:
        self.log = log
        self.path = path
        self.cap = cap
        self.base = os.fstat(log.fileno()).st_size  # earlier content (another step) stays
        self.head = (cap // 2) if cap else 0
        self.tail = (cap - self.head) if cap else 0
        self.written = 0  # bytes of output so far
        self.omitted = 0
        self.marker_len = 0  # the marker in the file now (0: none yet)
        self.dropped = 0  # bytes the file system refused (a full disk)
        self.drop_error = ""

    def write(self, data: bytes) -> None:
        """Append `data`. A log the disk cannot take (ENOSPC, EIO) never ends the attempt:
        what could not be written is counted and said at the end (the attempt's watchdog, its
        output tail and its record do not depend on the file)."""
        view = memoryview(data)
        try:
            while view:
                view = view[self.log.write(view) or 0 :]
        except OSError as exc:
            self.dropped += len(view)
            self.drop_error = exc.strerror or str(exc)
        self.written += len(data) - len(view)
        if self.cap and self._after_head() >= 2 * self.tail:
            self._compact()

    def finish(self) -> None:
        """Trim to the head, the marker and the last `tail` bytes (when over the cap)."""
        if self.cap and self._after_head() > self.tail:
            self._compact()
        if self.dropped:
            note = (
                f"\n[agentjobs] {self.dropped} bytes of output could not be written to this "
                f"log ({self.drop_error})\n"
            ).encode()
            with contextlib.suppress(OSError):
                self.log.write(note)

    def _after_head(self) -> int:
        """Bytes in the file after the head and the marker."""
        kept = self.written - self.omitted
        return max(0, kept - self.head)

    def _compact(self) -> None:
        with contextlib.suppress(OSError):  # a full disk: the log stays longer than its cap
            self._trim()

    def _trim(self) -> None:
        start = self.base + self.head  # where the marker goes
        end = start + self.marker_len + self._after_head()
        drop = self._after_head() - self.tail
        self.omitted += drop
        line = marker(self.omitted, self.cap or 0)
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)  # positioned writes (no O_APPEND)
        try:
            source, target = end - self.tail, start + len(line)
            _move(fd, source, target, self.tail)
            _pwrite_all(fd, line, start)
            os.ftruncate(fd, target + self.tail)
        finally:
            os.close(fd)
        self.marker_len = len(line)


def _move(fd: int, source: int, target: int, size: int) -> None:
    """Copy `size` bytes from `source` to `target` in the file, in chunks, in the direction
    that never overwrites bytes before they are copied (like memmove)."""
    if source == target:
        return
    forward = target < source
    done = 0
    while done < size:
        step = min(CHUNK, size - done)
        offset = done if forward else size - done - step
        chunk = os.pread(fd, step, source + offset)
        if len(chunk) != step:
            raise OSError(f"{step - len(chunk)} bytes of the log went missing while trimming it")
        _pwrite_all(fd, chunk, target + offset)
        done += step


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def chunks(handle: BinaryIO, start: int = 0) -> Iterator[bytes]:
    """The file from `start` to its end, `CHUNK` bytes at a time."""
    handle.seek(start)
    while chunk := handle.read(CHUNK):
        yield chunk


def copy_to(path: Path, write: Callable[[bytes], object], start: int = 0) -> int:
    """Copy `path` from byte `start` to `write` in chunks; returns the offset reached."""
    with open(path, "rb") as handle:
        for chunk in chunks(handle, start):
            write(chunk)
            start += len(chunk)
    return start


def tail_start(path: Path, lines: int) -> int:
    """The byte offset where the last `lines` lines of `path` begin (reading backwards in
    chunks: constant memory whatever the file's size)."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        seen = 0
        last_is_newline = False
        while position > 0:
            size = min(CHUNK, position)
            position -= size
            handle.seek(position)
            chunk = handle.read(size)
            if position + size == end:
                last_is_newline = chunk.endswith(b"\n")
                if last_is_newline:
                    chunk = chunk[:-1]  # a final newline ends the last line, it starts none
            index = len(chunk)
            while True:
                index = chunk.rfind(b"\n", 0, index)
                if index < 0:
                    break
                seen += 1
                if seen == lines:
                    return position + index + 1
        return 0
