"""isolation: worktree - each run in its own git worktree, on a branch left for review."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("hello\n")
    _git(repo, "add", "README")
    _git(repo, "commit", "-q", "-m", "init")
    return repo


def _job(probe: Path, name: str, isolation: str, fail: bool = False) -> str:
    script = (
        "import os, sys, time; from pathlib import Path\n"
        f"p = {str(probe)!r}\n"
        "def mark(w):\n"
        "    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        f"    os.write(fd, f'{{w}} {name} {{time.time()}}\\n'.encode()); os.close(fd)\n"
        "mark('start'); time.sleep(1.0)\n"
        f"Path('{name}.txt').write_text('made by {name}\\n'); mark('end')\n"
        f"sys.exit({1 if fail else 0})\n"
    )
    doc: dict[str, Any] = {
        "command": [sys.executable, "-c", script],
        "workdir": "..",
        "isolation": isolation,
        "retry": {"attempts": 1},
    }
    return json.dumps(doc)


def _intervals(probe: Path) -> dict[str, tuple[float, float]]:
    marks: dict[str, dict[str, float]] = {}
    for line in probe.read_text().splitlines():
        what, name, at = line.split()
        marks.setdefault(name, {})[what] = float(at)
    return {name: (m["start"], m["end"]) for name, m in marks.items()}


def _records(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((state_dir / "records").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in out if r["event"] == "attempt_finished"]


def test_worktree_runs_of_one_repo_overlap_and_leave_branches(
    cli, tmp_path: Path, state_dir: Path
) -> None:
    repo = _repo(tmp_path)
    probe = tmp_path / "probe"
    write(repo / "jobs.d" / "a.yaml", _job(probe, "a", "worktree"))
    write(repo / "jobs.d" / "b.yaml", _job(probe, "b", "worktree"))
    _git(repo, "add", "jobs.d")
    _git(repo, "commit", "-q", "-m", "jobs")
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    # both jobs name the same repository; with worktrees each run has its own lock key
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), "run", name]
        )
        for name in ("a", "b")
    ]
    assert [r.wait(timeout=60) for r in runs] == [0, 0]
    spans = _intervals(probe)
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert a0 < b1 and b0 < a1, f"worktree runs did not overlap: {spans}"
    records = _records(state_dir)
    assert len(records) == 2
    for record in records:
        tree = record["agent"]["worktree"]
        assert tree["branch"] == f"agentjobs/{record['job']}/{record['run_id']}"
        assert tree["kept"] is False and tree["commit"]
        assert not Path(tree["path"]).exists()  # removed after success; the branch stays
        shown = _git(repo, "show", f"{tree['branch']}:{record['job']}.txt")
        assert shown == f"made by {record['job']}"
    assert not (repo / "a.txt").exists()  # the checkout itself was not touched
    assert _git(repo, "status", "--porcelain") == ""


def test_plain_runs_of_one_repo_do_not_overlap(tmp_path: Path, cli, state_dir: Path) -> None:
    repo = _repo(tmp_path)
    probe = tmp_path / "probe"
    write(repo / "jobs.d" / "a.yaml", _job(probe, "a", "none"))
    write(repo / "jobs.d" / "b.yaml", _job(probe, "b", "none"))
    assert cli("--jobs-dir", J, "--state-dir", str(state_dir), "apply").code == 0
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentjobs",
                "--state-dir",
                str(state_dir),
                "run",
                name,
                "--wait",
            ]
        )
        for name in ("a", "b")
    ]
    assert [r.wait(timeout=60) for r in runs] == [0, 0]
    (a0, a1), (b0, b1) = _intervals(probe)["a"], _intervals(probe)["b"]
    assert a1 <= b0 or b1 <= a0


def test_a_failed_run_keeps_its_worktree_until_gc(cli, tmp_path: Path, state_dir: Path) -> None:
    repo = _repo(tmp_path)
    write(repo / "jobs.d" / "bad.yaml", _job(tmp_path / "probe", "bad", "worktree", fail=True))
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "run", "bad").code == 1
    tree = _records(state_dir)[0]["agent"]["worktree"]
    assert tree["kept"] is True and Path(tree["path"]).is_dir()
    assert (Path(tree["path"]) / "bad.txt").exists()  # left for inspection
    result = cli(*base, "gc")
    assert result.out.splitlines()[:2] == [
        f"removed worktree {tree['path']}",
        "1 worktree(s) removed",
    ]
    assert not Path(tree["path"]).exists()
    assert tree["branch"] in _git(repo, "branch", "--list", "agentjobs/*")


def test_a_run_whose_branch_outlived_its_worktree_continues_on_it(tmp_path: Path) -> None:
    """A supervisor killed after a success was committed on the branch (its worktree removed)
    but before the attempt was recorded: the retry's worktree is made on that branch."""
    from agentjobs import worktree

    repo = _repo(tmp_path)
    base = _git(repo, "rev-parse", "HEAD")
    _git(repo, "branch", "agentjobs/j/R1")
    _git(repo, "worktree", "add", "-q", str(tmp_path / "old"), "agentjobs/j/R1")
    (tmp_path / "old" / "done.txt").write_text("work\n")
    _git(tmp_path / "old", "add", "done.txt")
    _git(tmp_path / "old", "commit", "-q", "-m", "work")
    _git(repo, "worktree", "remove", str(tmp_path / "old"))
    _git(repo, "commit", "-q", "--allow-empty", "-m", "main moved on")
    folder = tmp_path / "worktrees"
    path = worktree.prepare(str(repo), folder, "j", "R1")
    assert (path / "done.txt").read_text() == "work\n"
    assert worktree.started(folder, "j", "R1") == (base, "main")
