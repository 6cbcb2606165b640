"""The `agentjobs-validate` hook in `.pre-commit-hooks.yaml`, run by the real pre-commit.

pre-commit installs a hook repository from a git commit, so the module first commits a snapshot of
this checkout's working tree (tracked and untracked-but-not-ignored files, so uncommitted work is
what gets tested) into a throwaway repository. Each test then builds a throwaway "user" repository
whose `.pre-commit-config.yaml` points at that snapshot and runs `pre-commit run --all-files`.

Building the hook's virtualenv (`language: python` pip-installs the snapshot) is the slow part, so
one PRE_COMMIT_HOME is shared by every test in this module and the environment is built once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write

HOOK_ID = "agentjobs-validate"
HOOK_NAME = "validate agentjobs job files"  # `name:` in .pre-commit-hooks.yaml
PRE_COMMIT_TIMEOUT = 900  # seconds; the first run creates a virtualenv and pip-installs agentjobs
GIT_TIMEOUT = 60

GOOD_JOB = """
    name: hello
    schedule: {every: 1h}
    command: [echo, hello]
    timeout: 10m
    """

BAD_JOB = """
    name: bad
    schedule: {every: 1h}
    command: [echo, bad]
    silence_timout: 5m
    """


def _env(pre_commit_home: Path | None = None) -> dict[str, str]:
    """The environment for git and pre-commit: no inherited git state or user/system config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT"))}
    env.update(
        GIT_AUTHOR_NAME="agentjobs tests",
        GIT_AUTHOR_EMAIL="tests@agentjobs.invalid",
        GIT_COMMITTER_NAME="agentjobs tests",
        GIT_COMMITTER_EMAIL="tests@agentjobs.invalid",
        GIT_CONFIG_GLOBAL=os.devnull,  # a user's commit.gpgsign or hooksPath must not leak in
        GIT_CONFIG_NOSYSTEM="1",
    )
    if pre_commit_home is not None:
        env["PRE_COMMIT_HOME"] = str(pre_commit_home)
    return env


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def _commit_all(repo: Path, message: str) -> str:
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "--no-verify", "--message", message)
    return _git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pre-commit cache for the module, so the hook's environment is built only once."""
    # `python -m pre_commit` uses the pre-commit installed beside pytest; if it is missing, fail.
    done = subprocess.run(
        [sys.executable, "-m", "pre_commit", "--version"],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"pre-commit is not installed (pip install -e '.[dev]'):\n{done}"
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A git repository holding this checkout's working tree as one commit: (path, sha)."""
    snapshot = tmp_path_factory.mktemp("hook-repo")
    listed = _git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not (source.is_file() or source.is_symlink()):
            continue  # deleted in the working tree but still in the index, or a submodule
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    assert (snapshot / ".pre-commit-hooks.yaml").is_file()
    _git(snapshot, "init", "--quiet", "--initial-branch=main")
    return snapshot, _commit_all(snapshot, "snapshot of the agentjobs working tree")


def _user_repo(root: Path, hook_repo: tuple[Path, str], files: dict[str, str]) -> Path:
    """A git repository with `files` staged and a config that uses the hook from `hook_repo`."""
    repo = root / "user-repo"
    path, sha = hook_repo
    write(
        repo / ".pre-commit-config.yaml",
        f"""
        repos:
          - repo: {path}
            rev: {sha}
            hooks: [{{id: {HOOK_ID}}}]
        """,
    )
    for name, text in files.items():
        write(repo / name, text)
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "add", "--all")
    return repo


def _pre_commit_run(repo: Path, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "--all-files", "--color=never", *extra],
        cwd=repo,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=PRE_COMMIT_TIMEOUT,
        check=False,
    )


def _status_line(output: str) -> str:
    """pre-commit's `<hook name>.....<Passed|Failed|Skipped>` line for our hook."""
    found = re.findall(rf"^{re.escape(HOOK_NAME)}\.*(?:\(no files to check\))?(\w+)$", output, re.M)
    assert len(found) == 1, f"no status line for {HOOK_NAME!r} in:\n{output}"
    return str(found[0])


def test_hook_passes_valid_job_files_including_the_shipped_examples(
    tmp_path: Path, pre_commit_home: Path, hook_repo: tuple[Path, str]
) -> None:
    files = {"jobs.d/hello.yaml": GOOD_JOB}
    # the examples nest jobs.d under another folder, use a global config and a prompt file
    for source in sorted((REPO / "examples").rglob("*")):
        if source.is_file():
            files[str(source.relative_to(REPO))] = source.read_text()
    repo = _user_repo(tmp_path, hook_repo, files)

    done = _pre_commit_run(repo, pre_commit_home)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert _status_line(output) == "Passed", output


def test_hook_fails_on_a_misspelled_key_and_names_file_line_and_fix(
    tmp_path: Path, pre_commit_home: Path, hook_repo: tuple[Path, str]
) -> None:
    repo = _user_repo(
        tmp_path, hook_repo, {"jobs.d/good.yaml": GOOD_JOB, "jobs.d/bad.yaml": BAD_JOB}
    )

    done = _pre_commit_run(repo, pre_commit_home)

    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert _status_line(output) == "Failed", output
    assert (
        "jobs.d/bad.yaml:4:1: silence_timout: unknown key `silence_timout`; "
        "did you mean `silence_timeout`?"
    ) in output.splitlines(), output
    assert "good.yaml" not in output, output


def test_hook_ignores_yaml_outside_a_jobs_directory(
    tmp_path: Path, pre_commit_home: Path, hook_repo: tuple[Path, str]
) -> None:
    repo = _user_repo(
        tmp_path,
        hook_repo,
        {
            "jobs.d/good.yaml": GOOD_JOB,
            "elsewhere/bad.yaml": BAD_JOB,  # not in a jobs.d folder
            "jobs.d/drafts/bad.yaml": BAD_JOB,  # jobs.d is not searched recursively
        },
    )

    done = _pre_commit_run(repo, pre_commit_home, "--verbose")

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert _status_line(output) == "Passed", output
    assert "ok: 1 job in 1 file" in output.splitlines(), output  # only jobs.d/good.yaml was given
    assert "silence_timout" not in output, output


def test_hook_is_skipped_when_no_job_files_exist(
    tmp_path: Path, pre_commit_home: Path, hook_repo: tuple[Path, str]
) -> None:
    repo = _user_repo(tmp_path, hook_repo, {"config/bad.yaml": BAD_JOB})

    done = _pre_commit_run(repo, pre_commit_home)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert _status_line(output) == "Skipped", output


def test_hook_fails_when_the_bad_file_is_one_of_many(
    tmp_path: Path, pre_commit_home: Path, hook_repo: tuple[Path, str]
) -> None:
    # pre-commit splits long file lists into batches run in parallel (>= 4 files each); a bad
    # file in any batch must still fail the hook.
    files = {
        f"jobs.d/job-{i:02d}.yaml": GOOD_JOB.replace("hello", f"job-{i:02d}") for i in range(11)
    }
    files["jobs.d/bad.yaml"] = BAD_JOB
    repo = _user_repo(tmp_path, hook_repo, files)

    done = _pre_commit_run(repo, pre_commit_home)

    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert _status_line(output) == "Failed", output
    assert (
        "jobs.d/bad.yaml:4:1: silence_timout: unknown key `silence_timout`; "
        "did you mean `silence_timeout`?"
    ) in output.splitlines(), output
