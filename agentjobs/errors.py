"""Errors users can cause, kept as values (`Problem`) or raised (`UserError`).

A `UserError` is printed as one line and exits 2 (STYLE.md rule 5). A `Problem` is one finding
in one file; the validator collects all of them before failing (rule 6).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding at one place in one file: `path:line:col: json.path: message`."""

    file: str
    line: int
    column: int
    json_path: str
    message: str
    severity: str = "error"  # "error" fails validation; "warning" never does

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        if self.json_path:
            return f"{where}: {self.json_path}: {self.message}"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.json_path,
            "message": self.message,
            "severity": self.severity,
        }


class UserError(Exception):
    """Something the user can fix: printed as one line, exit code 2, no traceback."""


class InvalidJobError(UserError):
    """The job files (or global config) are invalid; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0].render() if problems else "invalid job files"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


# The errors of the environment a user must fix (STYLE.md rule 5): a full or read-only disk,
# permissions, a failing device. Any other OSError is unexpected (a bug).
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}
)

_ADVICE = {
    errno.ENOSPC: "free space on that file system and run the command again",
    errno.EDQUOT: "free space (or raise the disk quota) and run the command again",
    errno.EIO: "the device reported an I/O error: check it (dmesg) and run the command again",
    errno.EROFS: "the file system is read-only: remount it read-write or use another --state-dir",
    errno.EACCES: "run agentjobs as the user that owns the state directory, or fix its permissions",
    errno.EPERM: "run agentjobs as the user that owns the state directory, or fix its permissions",
}


class StateWriteError(UserError, OSError):
    """A state file could not be written (or read) because of its environment: one line naming
    the path and what to do, exit 2. Also an `OSError` with the original errno, so code that
    tolerates a failed optional write (a cache) keeps tolerating it."""

    def __init__(self, path: Path | str, cause: OSError, verb: str = "write") -> None:
        strerror = cause.strerror or str(cause)
        advice = _ADVICE.get(cause.errno or 0, "fix the problem and run the command again")
        message = f"cannot {verb} {path}: {strerror}; {advice}"
        OSError.__init__(self, cause.errno, message)
        self.path = str(path)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StateReadError(StateWriteError):
    """A state file could not be read (permission denied, an I/O error)."""

    def __init__(self, path: Path | str, cause: OSError) -> None:
        super().__init__(path, cause, "read")


class StateUnavailableError(UserError):
    """The state cannot be had right now: its database is down or unreachable, a connection
    broke (a restart, a failover, a network cut), or another process held the state lock past
    the timeout. An error of the environment (one line, exit 2) that passes by itself: code that
    can wait (a leased attempt's finish, a lease renewal) tries again on this and on no other
    `UserError` (issue 11, item 6)."""


class StateDamagedError(UserError):
    """A state file exists but is not what agentjobs wrote (damaged, wrong shape, missing)."""


def environment_error(path: Path | str, exc: OSError, verb: str = "write") -> OSError:
    """`exc` as a `StateWriteError` (or `StateReadError`) naming `path` when it is an error of
    the environment; otherwise `exc` itself (a bug stays a bug)."""
    if isinstance(exc, StateWriteError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return exc
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else path
    return StateReadError(where, exc) if verb == "read" else StateWriteError(where, exc)
