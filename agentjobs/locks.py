"""Lock keys and concurrency slots on `flock(2)`.

A lock is a file under `<state>/locks/`; holding it means holding an exclusive `flock` on an open
descriptor. The kernel drops the lock when the last descriptor closes, so a killed process never
leaves a stale lock. The runner passes these descriptors to the attempt's process: the key stays
locked while any process of the attempt lives, even when the tick that started it was killed
(`kill -9`), so a second tick can never start a second agent in the same working directory.

Nothing here blocks: every acquisition is LOCK_NB. Waiting (`run --wait`) is a loop in the caller.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NOTE_BYTES = 256


@dataclass(slots=True)
class HeldLock:
    """An acquired lock; `release()` (or process exit) frees it."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def note(self, text: str) -> None:
        """Record who holds the lock (read by `holder()` for messages). Padded to a fixed size
        so no truncate is needed (one syscall on the hot path, not two)."""
        data = text.encode()[: NOTE_BYTES - 1].ljust(NOTE_BYTES - 1) + b"\n"
        os.pwrite(self.fd, data, 0)


def key_file(locks_dir: Path, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return locks_dir / f"key-{digest}.lock"


def try_lock(path: Path) -> HeldLock | None:
    """Take the lock at `path` without waiting; None when someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return HeldLock(path, fd)


def is_free(path: Path) -> bool:
    """Whether nobody holds the lock at `path` (a momentary probe)."""
    if not path.exists():
        return True
    held = try_lock(path)
    if held is None:
        return False
    held.release()
    return True


def holder(path: Path) -> str:
    """What the current holder wrote with `note()`, or '' when unknown."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def prepare_keys(locks_dir: Path, keys: Iterable[str]) -> None:
    """Create the lock files of `keys` ahead of their first claim (`apply` does it), so a tick
    that claims many new jobs does not create a file per claim under the state lock. Best
    effort: a claim creates a missing one itself."""
    with contextlib.suppress(OSError):
        locks_dir.mkdir(parents=True, exist_ok=True)
        for key in keys:
            path = key_file(locks_dir, key)
            if not path.exists():
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))


def try_key(locks_dir: Path, key: str) -> HeldLock | None:
    return try_lock(key_file(locks_dir, key))


def try_slot(locks_dir: Path, max_concurrent: int) -> HeldLock | None:
    """One of `max_concurrent` global slots, or None when all are taken."""
    for index in range(max_concurrent):
        held = try_lock(locks_dir / f"slot-{index}.lock")
        if held is not None:
            return held
    return None
