"""Landing a run's branch in its workdir's repository: `land: {mode: merge}` after a success,
and `agentjobs review approve` (review.py).

Landing never touches a working tree an agent may be using: the merge (or rebase, or squash)
is made in a temporary detached worktree of `into`'s head under `<state>/worktrees/`, and
`into` is then moved to the result: fast-forwarded where it is checked out (the workdir, or
another worktree; a local change in the way refuses it), else compare-and-swapped with
`git update-ref`. A conflict leaves everything as it was and says which files conflict.
The caller holds the workdir's lock key meanwhile (`Store.hold_key`), so no agent of a job
without `isolation: worktree` runs there while its branch moves.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentjobs.errors import UserError
from agentjobs.runner import capture

IDENTITY = ["-c", "user.name=agentjobs", "-c", "user.email=agentjobs@localhost"]
STRATEGIES = ("merge", "rebase", "squash")


@dataclass(frozen=True, slots=True)
class Landed:
    """How a landing went: `into`'s new head, or why it did not move (`conflict`)."""

    commit: str | None
    conflict: str | None = None
    already: bool = False  # the run's commits were in `into` already


def git(*args: str, cwd: str) -> str:
    """`git args` in `cwd`; its output, or UserError naming the command and what git said."""
    code, output = capture(["git", *args], cwd=cwd)
    if code != 0:
        raise UserError(f"git {' '.join(args[:2])} in {cwd} failed: {output.strip()[-500:]}")
    return output.strip()


def current_branch(repo: str) -> str | None:
    """The branch checked out in `repo`, or None (detached, not a repository)."""
    code, output = capture(["git", "symbolic-ref", "--short", "-q", "HEAD"], cwd=repo)
    return output.strip() or None if code == 0 else None


def snapshot(path: str) -> tuple[str, str] | None:
    """(HEAD, `git status --porcelain`) of the checkout at `path`; None when it is not one.
    Two snapshots differ when a run committed or changed a file there."""
    code, head = capture(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=path)
    if code != 0:
        return None
    code, status = capture(["git", "status", "--porcelain", "--untracked-files=all"], cwd=path)
    return (head.strip(), status) if code == 0 else None


def diff(repo: str, base: str, commit: str) -> str:
    """The full diff of a run's work (its branch from `base` to `commit`)."""
    code, output = capture(["git", "diff", "--no-color", f"{base}..{commit}"], cwd=repo)
    return output if code == 0 else f"(git diff failed: {output.strip()[-300:]})"


def land(
    repo: str,
    folder: Path,
    *,
    run_id: str,
    base: str,
    commit: str,
    into: str,
    strategy: str,
    message: str,
) -> Landed:
    """Land the commits `base..commit` on branch `into` of `repo` by `strategy`."""
    ref = f"refs/heads/{into}"
    code, head = capture(["git", "rev-parse", "-q", "--verify", f"{ref}^{{commit}}"], cwd=repo)
    if code != 0:
        raise UserError(f"branch {into} does not exist in {repo}; create it or set `land.into`")
    head = head.strip()
    if capture(["git", "merge-base", "--is-ancestor", commit, head], cwd=repo)[0] == 0:
        return Landed(head, already=True)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f"land-{run_id}"
    _drop(repo, scratch)
    git("worktree", "add", "-q", "--detach", str(scratch), head, cwd=repo)
    try:
        conflict = _combine(str(scratch), base, commit, head, strategy, message)
        if conflict is not None:
            return Landed(None, conflict)
        new = git("rev-parse", "HEAD", cwd=str(scratch))
    finally:
        _drop(repo, scratch)
    if new == head:  # a squash of changes `into` has already
        return Landed(head, already=True)
    moved = _move(repo, into, head, new)
    return Landed(new) if moved is None else Landed(None, moved)


def _combine(
    path: str, base: str, commit: str, head: str, strategy: str, message: str
) -> str | None:
    """Make the landed commit(s) on the detached `head` at `path`; the conflict, or None."""
    if strategy == "rebase":
        code, output = capture(
            ["git", *IDENTITY, "rebase", "-q", "--empty=drop", "--onto", head, base, commit],
            cwd=path,
        )
        undo = ["rebase", "--abort"]
    elif strategy == "squash":
        code, output = capture(["git", *IDENTITY, "merge", "-q", "--squash", commit], cwd=path)
        if code == 0 and capture(["git", "diff", "--cached", "--quiet"], cwd=path)[0] != 0:
            code, output = capture(["git", *IDENTITY, "commit", "-q", "-m", message], cwd=path)
        undo = ["reset", "-q", "--hard", head]
    else:
        code, output = capture(
            ["git", *IDENTITY, "merge", "-q", "--no-ff", "-m", message, commit], cwd=path
        )
        undo = ["merge", "--abort"]
    if code == 0:
        return None
    _, files = capture(["git", "diff", "--name-only", "--diff-filter=U"], cwd=path)
    capture(["git", *undo], cwd=path)
    listed = ", ".join(files.split()) or "see the output"
    return f"{strategy} conflicts in {listed} (git: {_line(output)})"


def _move(repo: str, into: str, old: str, new: str) -> str | None:
    """Move branch `into` from `old` to `new`; why not, or None. Where `into` is checked out
    its files follow (a fast-forward there); a local change in the way refuses it."""
    checked_out = _checkout_of(repo, into)
    if checked_out is None:
        code, output = capture(
            ["git", "update-ref", "-m", "agentjobs land", f"refs/heads/{into}", new, old], cwd=repo
        )
        if code != 0:
            return f"{into} moved meanwhile; land again (git: {_line(output)})"
        return None
    code, output = capture(["git", "merge", "-q", "--ff-only", new], cwd=checked_out)
    if code != 0:
        return (
            f"{into} is checked out in {checked_out} and could not move to the landed commit "
            f"(local changes in the way, or it moved meanwhile; git: {_line(output)}); "
            "commit or stash them and land again"
        )
    return None


def _line(output: str) -> str:
    """Git's output on one line (a message names it after a colon)."""
    return " / ".join(line.strip() for line in output.strip().splitlines() if line.strip())[-400:]


def _checkout_of(repo: str, branch: str) -> str | None:
    """The worktree of `repo` where `branch` is checked out, or None."""
    listing = git("worktree", "list", "--porcelain", cwd=repo)
    path = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            path = line[len("worktree ") :]
        elif line == f"branch refs/heads/{branch}" and path is not None:
            return path
    return None


def _drop(repo: str, path: Path) -> None:
    if path.exists():
        capture(["git", "worktree", "remove", "--force", str(path)], cwd=repo)
        shutil.rmtree(path, ignore_errors=True)
    capture(["git", "worktree", "prune"], cwd=repo)


def message(job: str, run_id: str, land: Mapping[str, Any], by: str) -> str:
    """The landed commit's message: which run, which commits, who approved."""
    base, commit = str(land.get("base") or "")[:12], str(land.get("commit") or "")[:12]
    return (
        f"agentjobs: land {job} run {run_id}\n\n"
        f"{land.get('branch')} ({base}..{commit}) by {land.get('strategy')}\n\n"
        f"Approved-by: {by}\n"
    )
