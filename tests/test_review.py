"""Issue 15: nothing lands unreviewed. `land` modes, the review inbox and hollow runs, end to
end in real git repositories with a fake agent (tests/fake_editor.py) that edits files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentjobs.store import open_store
from tests.conftest import State, write

EDITOR = Path(__file__).with_name("fake_editor.py")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real repository on branch main with one commit, and a reviewer's git identity."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Ann Reviewer")
    git(path, "config", "user.email", "ann@example.com")
    (path / "a.txt").write_text("one\ntwo\nthree\n")
    (path / ".gitignore").write_text("jobs.d/\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "init")
    return path


@pytest.fixture
def editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[dict[str, Any]]]:
    """The fake `claude` on PATH; `editor(*plans)` sets what its runs do and returns the
    calls so far (argv, cwd)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "claude"
    exe.write_text(f"#!{sys.executable}\n{EDITOR.read_text()}")
    exe.chmod(0o755)
    data = tmp_path / "editor"
    data.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_EDITOR_DIR", str(data))

    def plan(*plans: dict[str, Any]) -> list[dict[str, Any]]:
        if plans:
            (data / "plans.json").write_text(json.dumps(list(plans)))
        path = data / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return plan


def agent_job(repo: Path, name: str = "feature", **extra: Any) -> None:
    doc: dict[str, Any] = {
        "workdir": "..",
        "agent": {"kind": "claude", "prompt": "Add the feature."},
        "isolation": "worktree",
        "land": {"mode": "review"},
        "retry": {"attempts": 1},
        **extra,
    }
    write(repo / "jobs.d" / f"{name}.yaml", json.dumps(doc))


def records(state: State, event: str) -> list[dict[str, Any]]:
    store = open_store(state.location)
    return [r for r in store.records() if r["event"] == event]


def pending(state: State) -> list[dict[str, Any]]:
    return [e for e in open_store(state.location).reviews() if e["status"] == "pending"]


FEATURE = {"write": {"feature.txt": "the feature\n"}}


def test_review_approve_merges_exactly_the_runs_commits_into_into(
    ajs, state: State, repo: Path, editor
) -> None:
    agent_job(repo)
    # the agent commits once itself; what it leaves uncommitted is committed on its branch
    editor({"write": {"feature.txt": "part 1\n"}, "commit": "part 1"})
    assert ajs("apply").code == 0
    before = git(repo, "rev-parse", "main")
    done = ajs("run", "feature")
    assert done.code == 0, done.err
    assert "awaits review" in done.err
    [finished] = records(state, "attempt_finished")
    assert finished["outcome"] == "awaiting_review" and finished["next"] == "done"
    land = finished["land"]
    assert land["mode"] == "review" and land["into"] == "main" and land["base"] == before
    assert "feature.txt" in land["diffstat"]
    assert git(repo, "rev-parse", "main") == before  # nothing landed without a decision
    [entry] = pending(state)
    run_commits = git(repo, "rev-list", f"{before}..{land['commit']}").split()

    listed = ajs("review", "list")
    assert entry["run_id"] in listed.out and "feature.txt" not in listed.out
    shown = ajs("review", "show", entry["run_id"][:10])
    assert "+part 1" in shown.out and "I changed feature.txt." in shown.out
    assert "$0.0125" in shown.out

    approved = ajs("review", "approve", entry["run_id"][:10])
    assert approved.code == 0, approved.err
    assert "approved by Ann Reviewer <ann@example.com>" in approved.out
    head = git(repo, "rev-parse", "main")
    # a merge commit of the old main and the run's commit: exactly the run's commits arrive
    assert git(repo, "rev-parse", f"{head}^1") == before
    assert git(repo, "rev-parse", f"{head}^2") == land["commit"]
    assert set(git(repo, "rev-list", f"{before}..main").split()) == {head, *run_commits}
    assert git(repo, "diff", "--name-only", before, "main") == "feature.txt"
    assert (repo / "feature.txt").read_text() == "part 1\n"  # the checkout followed
    assert "Approved-by: Ann Reviewer <ann@example.com>" in git(repo, "log", "-1", "--format=%B")
    [decided] = records(state, "reviewed")
    assert decided["decision"] == "approve" and decided["by"] == "Ann Reviewer <ann@example.com>"
    assert decided["landed"] == head and decided["run_id"] == entry["run_id"]
    assert pending(state) == []
    described = ajs("describe", entry["run_id"]).out
    assert "Review:       approved by Ann Reviewer <ann@example.com>" in described
    again = ajs("review", "approve", entry["run_id"])
    assert again.code != 0 and "already decided: approved by Ann Reviewer" in again.err
    assert "Traceback" not in again.err and git(repo, "rev-parse", "main") == head


def test_review_reject_leaves_into_untouched_and_keeps_the_branch(
    aj, state_dir: Path, repo: Path, editor
) -> None:
    agent_job(repo)
    editor(FEATURE)
    assert aj("apply").code == 0
    before = git(repo, "rev-parse", "main")
    assert aj("run", "feature").code == 0
    state = State.files(state_dir)
    [entry] = pending(state)
    refused = aj("review", "reject", entry["run_id"])
    assert refused.code != 0 and "--note" in refused.err  # a reason is required
    rejected = aj("review", "reject", entry["run_id"], "--note", "not this way")
    assert rejected.code == 0, rejected.err
    assert git(repo, "rev-parse", "main") == before
    assert not (repo / "feature.txt").exists()
    assert git(repo, "rev-parse", entry["branch"]) == entry["commit"]  # kept for reference
    [decided] = records(state, "reviewed")
    assert (decided["decision"], decided["note"]) == ("reject", "not this way")
    assert json.loads(aj("review", "list", "--all", "-o", "json").out)[0]["status"] == "rejected"
    assert aj("review", "list").out.startswith("no runs awaiting review")


def test_review_retry_puts_the_guidance_note_and_diff_summary_in_the_next_prompt(
    ajs, state: State, repo: Path, editor, tmp_path: Path
) -> None:
    agent_job(repo)
    editor(FEATURE)
    assert ajs("apply").code == 0
    assert ajs("run", "feature").code == 0
    [entry] = pending(state)
    sent = ajs(
        "review", "retry", entry["run_id"], "--guidance", "Put it in b.txt", "--note", "wrong"
    )
    assert sent.code == 0, sent.err
    ran = ajs("tick")
    assert ran.code == 0, ran.err
    first, second = (call["argv"] for call in editor())
    prompt = second[second.index("-p") + 1] if "-p" in second else " ".join(second)
    assert "Put it in b.txt" in prompt and "Reviewer's note: wrong" in prompt
    assert "feature.txt" in prompt  # what the rejected run changed
    assert "Put it in b.txt" not in " ".join(first)
    [decided] = records(state, "reviewed")
    assert decided["decision"] == "retry" and decided["guidance"] == "Put it in b.txt"
    later = [r for r in records(state, "attempt_finished") if r["run_id"] == decided["retry_run"]]
    assert later and later[0]["trigger"] == "review"
    assert [e["run_id"] for e in pending(state)] == [decided["retry_run"]]


def test_a_command_job_gets_the_guidance_in_agentjobs_guidance(
    aj, state_dir: Path, repo: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    doc = {
        "workdir": "..",
        "command": f'echo "$AGENTJOBS_GUIDANCE" >> {seen}; date +%N >> a.txt',
        "shell": True,
        "isolation": "worktree",
        "land": {"mode": "review"},
    }
    write(repo / "jobs.d" / "cmd.yaml", json.dumps(doc))
    assert aj("apply").code == 0
    assert aj("run", "cmd").code == 0
    [entry] = pending(State.files(state_dir))
    assert aj("review", "retry", entry["run_id"], "--guidance", "use fewer lines").code == 0
    assert aj("tick").code == 0
    assert seen.read_text().splitlines() == ["", "use fewer lines"]


@pytest.mark.parametrize("strategy", ["merge", "rebase", "squash"])
def test_merge_mode_lands_after_success_and_a_passing_verify(
    aj, state_dir: Path, repo: Path, editor, strategy: str
) -> None:
    agent_job(
        repo,
        land={"mode": "merge", "strategy": strategy},
        verify={"command": "test -f feature.txt", "shell": True},
    )
    editor({**FEATURE, "commit": "the feature"})
    assert aj("apply").code == 0
    # main moves on meanwhile (no conflict): rebase and merge must both keep it
    git(repo, "commit", "-q", "--allow-empty", "-m", "meanwhile")
    before = git(repo, "rev-parse", "main")
    done = aj("run", "feature")
    assert done.code == 0, done.err
    [finished] = records(State.files(state_dir), "attempt_finished")
    assert finished["outcome"] == "succeeded"
    head = git(repo, "rev-parse", "main")
    assert finished["land"]["merged"] == head
    assert (repo / "feature.txt").read_text() == "the feature\n"
    assert git(repo, "merge-base", "--is-ancestor", before, head) == ""
    parents = git(repo, "rev-list", "--parents", "-n", "1", head).split()[1:]
    if strategy == "merge":
        assert parents == [before, finished["land"]["commit"]]
    else:  # one new commit on top of main, the run's change
        assert parents == [before]
        assert git(repo, "diff", "--name-only", before, head) == "feature.txt"
    assert pending(State.files(state_dir)) == []


def test_merge_mode_with_a_failing_verify_does_not_merge(
    aj, state_dir: Path, repo: Path, editor
) -> None:
    agent_job(repo, land={"mode": "merge"}, verify={"command": "false", "shell": True})
    editor(FEATURE)
    assert aj("apply").code == 0
    before = git(repo, "rev-parse", "main")
    assert aj("run", "feature").code != 0
    [finished] = records(State.files(state_dir), "attempt_finished")
    assert finished["outcome"] == "verify_failed" and "land" not in finished
    assert git(repo, "rev-parse", "main") == before and not (repo / "feature.txt").exists()
    assert pending(State.files(state_dir)) == []


def test_a_conflicting_merge_waits_for_review_and_approve_refuses_it(
    ajs, state: State, repo: Path, tmp_path: Path
) -> None:
    # the "agent" edits a.txt's first line in its worktree while someone commits another
    # first line on main: the merge conflicts
    script = (
        "sed -i 1s/one/agent/ a.txt && "
        f"cd {repo} && sed -i 1s/one/human/ a.txt && "
        "git -c user.name=H -c user.email=h@x commit -q -am human"
    )
    doc = {
        "workdir": "..",
        "command": script,
        "shell": True,
        "isolation": "worktree",
        "land": {"mode": "merge"},
    }
    write(repo / "jobs.d" / "clash.yaml", json.dumps(doc))
    assert ajs("apply").code == 0
    done = ajs("run", "clash")
    assert done.code == 0, done.err
    [finished] = records(state, "attempt_finished")
    assert finished["outcome"] == "awaiting_review"
    assert "conflicts in a.txt" in finished["error"]
    human = git(repo, "rev-parse", "main")
    assert git(repo, "log", "-1", "--format=%s", "main") == "human"  # nothing merged
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    [entry] = pending(state)
    assert "a.txt" in entry["conflict"]
    assert "conflict" in ajs("review", "list").out
    refused = ajs("review", "approve", entry["run_id"])
    assert refused.code != 0 and "conflicts in a.txt" in refused.err
    assert "Traceback" not in refused.err and len(refused.err.strip().splitlines()) == 1
    assert git(repo, "rev-parse", "main") == human
    assert pending(state) != [] and records(state, "reviewed") == []
    assert git(repo, "worktree", "list").count("\n") == 0  # no scratch worktree left


def test_no_change_for_a_run_with_no_diff_is_retried_by_the_retry_rules(
    aj, state_dir: Path, repo: Path, editor
) -> None:
    agent_job(
        repo,
        expect={"changes": True},
        retry={"attempts": 2, "backoff": {"initial": "0s", "jitter": "0s"}},
    )
    editor({"write": {}}, FEATURE)
    assert aj("apply").code == 0
    first = aj("run", "feature")
    assert first.code != 0
    assert aj("tick").code == 0
    outcomes = [r["outcome"] for r in records(State.files(state_dir), "attempt_finished")]
    assert outcomes == ["no_change", "awaiting_review"]
    [hollow, _] = records(State.files(state_dir), "attempt_finished")
    assert "no commit and no diff" in hollow["error"]


def test_no_change_without_a_worktree_and_never_when_something_changed(
    aj, state_dir: Path, repo: Path, tmp_path: Path
) -> None:
    for name, command in (("idle", "true"), ("busy", "echo more >> a.txt")):
        doc = {"workdir": "..", "command": command, "shell": True, "expect": {"changes": True}}
        write(repo / "jobs.d" / f"{name}.yaml", json.dumps(doc))
    (repo / "untracked.txt").write_text("dirt from before the run\n")
    assert aj("apply").code == 0
    assert aj("run", "idle").code != 0
    assert aj("run", "busy").code == 0
    by_job = {r["job"]: r for r in records(State.files(state_dir), "attempt_finished")}
    assert by_job["idle"]["outcome"] == "no_change" and by_job["busy"]["outcome"] == "succeeded"


def test_land_review_needs_a_worktree(aj, repo: Path) -> None:
    write(
        repo / "jobs.d" / "x.yaml",
        json.dumps({"workdir": "..", "command": ["true"], "land": {"mode": "review"}}),
    )
    checked = aj("validate")
    assert checked.code != 0 and "add `isolation: worktree`" in checked.out + checked.err


def test_a_held_workdir_key_stops_claims_until_released(state: State, repo: Path) -> None:
    store = open_store(state.location)
    release = store.hold_key("some-key", "landing of run X", 60)
    assert release is not None
    assert store.hold_key("some-key", "another", 60) is None
    release()
    again = store.hold_key("some-key", "another", 60)
    assert again is not None
    again()


def test_a_merge_lands_only_while_no_agent_works_in_the_workdir(
    state_dir: Path, repo: Path, editor, tmp_path: Path
) -> None:
    """A job without a worktree holds the workdir's lock key while it runs: a merge-mode run
    that finishes meanwhile waits for the key before its branch moves main, and that job
    cannot start while a landing holds the key."""
    started, release = tmp_path / "started", tmp_path / "release"
    doc = {
        "workdir": "..",
        "command": f"touch {started}; while [ ! -f {release} ]; do sleep 0.05; done",
        "shell": True,
    }
    write(repo / "jobs.d" / "hold.yaml", json.dumps(doc))
    agent_job(repo, land={"mode": "merge"})
    editor({**FEATURE, "commit": "the feature"})
    base = [sys.executable, "-m", "agentjobs", "--jobs-dir", "repo/jobs.d", "--state-dir"]
    base.append(str(state_dir))
    assert subprocess.run([*base, "apply"], capture_output=True).returncode == 0
    before = git(repo, "rev-parse", "main")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    holder = subprocess.Popen([*base, "run", "hold"], **quiet)  # type: ignore[call-overload]
    feature = None
    try:
        for _ in range(200):
            if started.exists():
                break
            subprocess.run(["sleep", "0.05"])
        assert started.exists()
        feature = subprocess.Popen([*base, "run", "feature"], **quiet)  # type: ignore[call-overload]
        with pytest.raises(subprocess.TimeoutExpired):
            feature.wait(timeout=3)  # the agent is done; its landing waits for the key
        assert git(repo, "rev-parse", "main") == before
        release.write_text("")
        assert holder.wait(timeout=30) == 0
        assert feature.wait(timeout=30) == 0
    finally:
        for process in (holder, feature):
            if process is not None and process.poll() is None:
                process.kill()
    by_job = {r["job"]: r for r in records(State.files(state_dir), "attempt_finished")}
    assert by_job["feature"]["land"]["merged"] == git(repo, "rev-parse", "main")
    assert by_job["feature"]["finished_at"] >= by_job["hold"]["finished_at"]

    # and the other way round: while a landing holds the key, the job cannot start
    store = open_store(str(state_dir))
    let_go = store.hold_key(str(repo), "landing of run X", 60)
    assert let_go is not None
    refused = subprocess.run([*base, "run", "hold"], capture_output=True, text=True)
    let_go()
    assert "is held by landing of run X" in refused.stderr and "stays queued" in refused.stderr
    assert not [
        r for r in records(State.files(state_dir), "attempt_started") if r["job"] == "hold"
    ][1:]


def test_one_awaiting_review_notification_per_run(
    aj, state_dir: Path, repo: Path, editor, tmp_path: Path
) -> None:
    told = tmp_path / "told.jsonl"
    sink = f"import sys; open({str(told)!r}, 'a').write(sys.stdin.read() + '\\n')"
    agent_job(repo, notify={"command": [sys.executable, "-c", sink]})  # the default events
    editor(FEATURE)
    assert aj("apply").code == 0
    assert aj("run", "feature").code == 0
    events = [json.loads(line) for line in told.read_text().splitlines() if line.strip()]
    assert [e["event"] for e in events] == ["awaiting_review"]
    assert events[0]["text"].startswith("agentjobs feature awaiting review (attempt 1)")
    [entry] = pending(State.files(state_dir))
    assert aj("review", "approve", entry["run_id"]).code == 0
    assert len(told.read_text().splitlines()) == 1  # a decision sends nothing more


def test_the_inbox_moves_with_state_export_and_import(
    aj, cli, state_dir: Path, repo: Path, editor, tmp_path: Path
) -> None:
    agent_job(repo)
    editor(FEATURE)
    assert aj("apply").code == 0
    assert aj("run", "feature").code == 0
    export = tmp_path / "state.jsonl"
    assert aj("state", "export", "--file", str(export)).code == 0
    moved = tmp_path / "moved"
    assert cli("--state-dir", str(moved), "state", "import", str(export)).code == 0
    listed = [
        json.loads(cli("--state-dir", str(where), "-o", "json", "review", "list").out)
        for where in (state_dir, moved)
    ]
    assert listed[0] == listed[1] and len(listed[0]) == 1
