"""`agentjobs doctor`: agent CLIs found on the job's PATH, their versions, auth variable names."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from agentjobs.runner import version_of
from tests.conftest import write

J = "repo/jobs.d"
TOKEN = "sk-ant-oat01-do-not-print-me"
OPENAI = "sk-proj-never-shown-either"
AUTH_NAMES = (
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "CODEX_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH is only this directory, which holds a fake `claude` (and no codex)."""
    folder = tmp_path / "bin"
    claude = write(folder / "claude", '#!/bin/sh\necho "2.0.14 (Claude Code)"\n')
    claude.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    for name in AUTH_NAMES:
        monkeypatch.delenv(name, raising=False)
    return folder


def _apply(cli, jobs_dir: Path, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    write(
        jobs_dir / "fix-tests.yaml",
        """
        agent: {kind: claude, prompt: Fix the failing tests.}
        secrets: [CLAUDE_CODE_OAUTH_TOKEN]
        """,
    )
    write(jobs_dir / "agent.env", f"OPENAI_API_KEY={OPENAI}\n")
    write(
        jobs_dir / "review.yaml",
        """
        agent: {kind: codex, prompt: Review the last commit.}
        env_file: agent.env
        """,
    )
    write(jobs_dir / "docs.yaml", "command: [make, docs]\n")
    result = cli("--jobs-dir", J, "--state-dir", str(state_dir), "apply")
    assert result.code == 0, result.out + result.err


def test_doctor_reports_cli_version_and_auth_names_and_fails_on_a_missing_cli(
    cli, jobs_dir: Path, state_dir: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apply(cli, jobs_dir, state_dir)
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)
    result = cli("--state-dir", str(state_dir), "doctor")
    assert result.code == 1
    lines = result.out.splitlines()
    assert [re.split(r"\s{2,}", line) for line in lines[:3]] == [
        ["JOB", "AGENT", "CLI", "VERSION", "AUTH"],
        [
            "fix-tests",
            "claude",
            str(bin_dir / "claude"),
            "2.0.14 (Claude Code)",
            "CLAUDE_CODE_OAUTH_TOKEN (environment)",
        ],
        ["review", "codex", "codex: not found", "-", "OPENAI_API_KEY (env_file)"],
    ]
    assert lines[3:] == [
        "review: `codex` is not on the job's PATH; install it or set PATH in env",
        "review: OPENAI_API_KEY not listed in `secrets`: its value would not be redacted",
        # codex refuses a workdir outside git (issue 12): said before a night of failures
        "review: the workdir is not in a git repository: codex refuses to run there (exit 1, a "
        "permanent failure); run `git init` there or add --skip-git-repo-check to the agent's "
        "extra_args",
    ]
    (jobs_dir.parent / ".git").mkdir()  # the same jobs in a repository: nothing to say
    again = cli("--state-dir", str(state_dir), "doctor")
    assert "git repository" not in again.out
    assert TOKEN not in result.out + result.err
    assert OPENAI not in result.out + result.err


def test_doctor_json_and_exit_0_when_every_cli_is_found(
    cli, jobs_dir: Path, state_dir: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codex = write(bin_dir / "codex", "#!/bin/sh\necho codex-cli 0.46.0\n")
    codex.chmod(0o755)
    _apply(cli, jobs_dir, state_dir)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TOKEN)
    result = cli("--state-dir", str(state_dir), "-o", "json", "doctor")
    assert result.code == 0, result.out + result.err
    assert TOKEN not in result.out and OPENAI not in result.out
    checks = json.loads(result.out)
    assert [(c["job"], c["found"], c["version"]) for c in checks] == [
        ("fix-tests", True, "2.0.14 (Claude Code)"),
        ("review", True, "codex-cli 0.46.0"),
    ]
    assert checks[0]["auth"] == [{"name": "ANTHROPIC_API_KEY", "source": "environment"}]
    assert checks[0]["unredacted"] == ["ANTHROPIC_API_KEY"]
    assert checks[1]["auth"] == [{"name": "OPENAI_API_KEY", "source": "env_file"}]
    assert checks[1]["path"] == str(codex)


def test_doctor_says_when_no_auth_variable_is_set_and_no_agent_jobs(
    cli, jobs_dir: Path, state_dir: Path, bin_dir: Path
) -> None:
    write(jobs_dir / "fix.yaml", "agent: {kind: claude, prompt: Fix it.}\n")
    write(jobs_dir / "own.yaml", "agent: {kind: custom, command: [/bin/true], prompt: Go.}\n")
    applied = cli("--jobs-dir", J, "--state-dir", str(state_dir), "apply")
    assert applied.code == 0, applied.out + applied.err
    result = cli("--state-dir", str(state_dir), "doctor")
    assert result.code == 0
    # a custom command is found but not run (it may not know --version); no auth is expected
    assert re.split(r"\s{2,}", result.out.splitlines()[2]) == [
        "own",
        "custom",
        "/bin/true",
        "-",
        "-",
    ]
    assert "none of CLAUDE_CODE_OAUTH_TOKEN or ANTHROPIC_API_KEY" in result.out
    assert result.out.splitlines()[-1] == (
        "fix: no CLAUDE_CODE_OAUTH_TOKEN or ANTHROPIC_API_KEY set; "
        "an unattended run may not be able to log in"
    )
    empty = cli("--state-dir", str(state_dir / "empty"), "doctor")
    assert (empty.code, empty.out) == (0, "no agent jobs applied; run `agentjobs apply`\n")


def test_version_of_a_cli_that_hangs_or_fails_is_none(tmp_path: Path) -> None:
    hangs = write(tmp_path / "hangs", "#!/bin/sh\nsleep 30\n")
    fails = write(tmp_path / "fails", "#!/bin/sh\necho broken >&2\nexit 3\n")
    for script in (hangs, fails):
        script.chmod(0o755)
    started = time.monotonic()
    assert version_of([str(hangs), "--version"], timeout=0.5) is None
    assert time.monotonic() - started < 5
    assert version_of([str(fails), "--version"]) is None
    assert version_of([str(tmp_path / "absent"), "--version"]) is None
    assert version_of(["/bin/sh", "-c", "echo; echo '  v1.2.3  '"]) == "v1.2.3"
