"""Errors users can cause, kept as values (`Problem`) or raised (`UserError`).

A `UserError` is printed as one line and exits 2 (STYLE.md rule 5). A `Problem` is one finding
in one file; the validator collects all of them before failing (rule 6).
"""

from __future__ import annotations

from dataclasses import dataclass


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


class StateWriteError(UserError):
    """Placeholder (filled in below)."""
