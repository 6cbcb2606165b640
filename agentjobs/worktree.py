"""`isolation: worktree`: each run of a job works in its own `git worktree`.

The worktree is made from the job's workdir at its current HEAD, on a new branch
`agentjobs/<job>/<run-id>`, under `<state>/worktrees/`. Retries of the run reuse it (a
corrective attempt continues from where the last one stopped). When the run succeeds, what the
agent left uncommitted is committed on the branch, and the worktree directory is removed: the
branch stays for review. A failed run keeps its worktree for inspection until `agentjobs gc`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentjobs.landing import IDENTITY, current_branch
from agentjobs.landing import git as _git
from agentjobs.runner import capture


def branch_name(job: str, run_id: str) -> str:
    return f"agentjobs/{job}/{run_id}"


def prepare(repo: str, folder: Path, job: str, run_id: str) -> Path:
    """The run's worktree (made on its first attempt). Its `.base` file keeps the commit it
    started from and the workdir's branch then (where `land` merges by default)."""
    path = folder / f"{job}-{run_id}"
    if path.is_dir():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    branch = branch_name(job, run_id)
    head = _git("rev-parse", "HEAD", cwd=repo)
    base_file = folder / f"{job}-{run_id}.base"
    if capture(["git", "rev-parse", "-q", "--verify", f"refs/heads/{branch}"], cwd=repo)[0] == 0:
        # the branch outlived its worktree (its supervisor died after a success was committed,
        # before it was recorded): the retry continues on it
        _git("worktree", "add", str(path), branch, cwd=repo)
        if not base_file.exists():
            base = _git("merge-base", branch, head, cwd=repo)
            base_file.write_text(f"{base}\n{current_branch(repo) or ''}\n")
        return path
    _git("worktree", "add", "-b", branch, str(path), head, cwd=repo)
    base_file.write_text(f"{head}\n{current_branch(repo) or ''}\n")
    return path


def started(folder: Path, job: str, run_id: str) -> tuple[str | None, str | None]:
    """(base commit, the workdir's branch) when the run's worktree was made."""
    try:
        lines = (folder / f"{job}-{run_id}.base").read_text().splitlines()
    except OSError:
        return None, None
    return (lines[0] or None if lines else None), (lines[1] or None if len(lines) > 1 else None)


def finish(folder: Path, job: str, run_id: str, succeeded: bool) -> dict[str, Any]:
    """Commit a successful run's changes on its branch and remove the worktree; facts for the
    run record: branch, base commit, resulting commit (None when nothing changed), path."""
    path = folder / f"{job}-{run_id}"
    base_file = folder / f"{job}-{run_id}.base"
    base, workdir_branch = started(folder, job, run_id)
    facts: dict[str, Any] = {
        "branch": branch_name(job, run_id),
        "base": base,
        "path": str(path),
        "kept": not succeeded,
        "from_branch": workdir_branch,
    }
    if not path.is_dir():
        return facts
    if succeeded and _git("status", "--porcelain", cwd=str(path)):
        _git("add", "-A", cwd=str(path))
        _git(*IDENTITY, "commit", "-q", "-m", f"agentjobs: {job} run {run_id}", cwd=str(path))
    head = _git("rev-parse", "HEAD", cwd=str(path))
    facts["commit"] = head if head != base else None
    if succeeded:
        remove(path)
        base_file.unlink(missing_ok=True)
    return facts


def remove(path: Path) -> None:
    """Remove a worktree directory (its branch stays)."""
    common = capture(["git", "rev-parse", "--git-common-dir"], cwd=str(path))
    capture(["git", "worktree", "remove", "--force", str(path)], cwd=str(path.parent))
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    if common[0] == 0:
        git_dir = Path(path, common[1].strip()).resolve()
        capture(["git", "--git-dir", str(git_dir), "worktree", "prune"])


def collect(folder: Path, active: set[str]) -> list[str]:
    """`agentjobs gc`: remove the worktrees of runs that are no longer queued or running."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        run_id = path.name.rsplit("-", 1)[-1]
        if run_id in active:
            continue
        remove(path)
        Path(f"{path}.base").unlink(missing_ok=True)
        removed.append(str(path))
    return removed


def diffstat(facts: Mapping[str, Any], repo: str | None) -> str | None:
    """`git diff --stat` of a run's work against the commit its worktree started from: the
    commit made on its branch (looked up in `repo`, the job's workdir, which shares the
    branch), or, for a worktree kept after a failure, what is in it now. None when there is
    nothing to compare (no base, no change, the repository or worktree is gone)."""
    base, commit, path = facts.get("base"), facts.get("commit"), facts.get("path")
    if not isinstance(base, str) or not base:
        return None
    if isinstance(commit, str) and commit and repo and Path(repo).is_dir():
        code, output = capture(["git", "diff", "--stat", base, commit], cwd=repo)
    elif isinstance(path, str) and Path(path).is_dir():
        code, output = capture(["git", "diff", "--stat", base], cwd=path)
    else:
        return None
    return (output.rstrip() or None) if code == 0 else None
