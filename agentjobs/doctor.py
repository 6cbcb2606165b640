"""`agentjobs doctor`: can each applied agent job start its CLI here, and is it authenticated?

An unattended run sees cron's environment, not a login shell: a short PATH and none of the
variables a shell profile sets. So the CLI is looked up on the PATH the job would get (this
process's environment, then the job's `env_file`, then its `env`, as `environment.build_env`
merges them), its `--version` runs with that environment, and the authentication variables
are looked for in it. Only variable names are ever reported, never values.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentjobs.errors import UserError

if TYPE_CHECKING:
    from agentjobs.store import AppliedJob

# The variables each CLI reads for a token that needs no interactive login. Claude Code also
# works from a `claude login` session in ~/.claude, so a missing variable is a note, not a failure.
AUTH_VARIABLES: dict[str, tuple[str, ...]] = {
    "claude": ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY"),
    "codex": ("OPENAI_API_KEY", "CODEX_API_KEY"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "aider": ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"),
}

VersionOf = Callable[[Sequence[str], Mapping[str, str]], str | None]


@dataclass(frozen=True, slots=True)
class AgentCheck:
    """What doctor found for one agent job."""

    job: str
    agent: str  # the agent kind
    cli: str  # the program: the kind's CLI, or the first word of a custom agent's command
    path: str | None  # where the CLI is on the job's PATH; None: not found
    version: str | None  # the first line of `CLI --version`; None: not found or it failed
    auth: tuple[tuple[str, str], ...]  # (variable, where it is set: env, env_file, environment)
    wanted: tuple[str, ...]  # the variables looked for
    unredacted: tuple[str, ...] = ()  # set auth variables the job does not list in `secrets`
    problem: str | None = None  # e.g. the env file cannot be read
    # codex only: whether its workdir is in a git repository (it refuses to run outside one
    # unless given --skip-git-repo-check); None where it does not matter
    git_repo: bool | None = None

    @property
    def found(self) -> bool:
        return self.path is not None

    def describe_auth(self) -> str:
        if self.auth:
            return ", ".join(f"{name} ({where})" for name, where in self.auth)
        return f"none of {' or '.join(self.wanted)}" if self.wanted else "-"

    def notes(self) -> list[str]:
        """What to fix, one line each."""
        notes = []
        if self.problem:
            notes.append(self.problem)
        if not self.found:
            notes.append(f"`{self.cli}` is not on the job's PATH; install it or set PATH in env")
        elif self.version is None and self.agent in AUTH_VARIABLES:
            notes.append(f"`{self.cli} --version` failed with the job's environment")
        if not self.auth and self.wanted:
            names = " or ".join(self.wanted)
            notes.append(f"no {names} set; an unattended run may not be able to log in")
        if self.unredacted:
            names = ", ".join(self.unredacted)
            notes.append(f"{names} not listed in `secrets`: its value would not be redacted")
        if self.git_repo is False:
            notes.append(
                "the workdir is not in a git repository: codex refuses to run there (exit 1, "
                "a permanent failure); run `git init` there or add --skip-git-repo-check to "
                "the agent's extra_args"
            )
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "agent": self.agent,
            "cli": self.cli,
            "path": self.path,
            "found": self.found,
            "version": self.version,
            "auth": [{"name": name, "source": where} for name, where in self.auth],
            "auth_wanted": list(self.wanted),
            "unredacted": list(self.unredacted),
            "problem": self.problem,
            "git_repo": self.git_repo,
        }


def check_agents(
    applied: Mapping[str, AppliedJob], environ: Mapping[str, str], version_of: VersionOf
) -> list[AgentCheck]:
    """One check per applied job with an `agent` block, in job name order."""
    return [
        check_agent(job, environ, version_of)
        for _, job in sorted(applied.items())
        if isinstance(job.spec.get("agent"), Mapping)
    ]


def check_agent(job: AppliedJob, environ: Mapping[str, str], version_of: VersionOf) -> AgentCheck:
    from agentjobs.environment import read_env_file

    agent = job.spec["agent"]
    kind = str(agent.get("kind", "?"))
    command = (agent.get("command") or []) if kind == "custom" else [kind]
    cli = str(command[0]) if command else ""
    wanted = AUTH_VARIABLES.get(kind, ())
    job_env = {str(key): str(value) for key, value in job.spec.get("env") or ()}
    file_env: dict[str, str] = {}
    problem = None
    env_file = job.spec.get("env_file")
    if env_file:
        try:
            file_env = read_env_file(env_file)
        except UserError as exc:
            problem = str(exc)
    auth = []
    for name in wanted:
        for where, source in (("env", job_env), ("env_file", file_env), ("environment", environ)):
            if source.get(name):
                auth.append((name, where))
                break
    environment = {**environ, **file_env, **job_env}
    path = _find(cli, environment.get("PATH", os.defpath), str(job.spec.get("workdir", ".")))
    # a custom command is not run: it may not know --version
    version = version_of([path, "--version"], environment) if path and wanted else None
    secrets = set(job.spec.get("secrets") or ())
    git_repo = None
    if kind == "codex" and "--skip-git-repo-check" not in (agent.get("extra_args") or ()):
        from pathlib import Path

        from agentjobs.gitinfo import in_repository

        git_repo = in_repository(Path(str(job.spec.get("workdir", "."))))
    return AgentCheck(
        job=job.name,
        agent=kind,
        cli=cli,
        path=path,
        version=version,
        auth=tuple(auth),
        wanted=wanted,
        unredacted=tuple(name for name, _ in auth if name not in secrets),
        problem=problem,
        git_repo=git_repo,
    )


def _find(cli: str, path: str, workdir: str) -> str | None:
    """`cli` on `path`, or, when it names a file (`./run-agent`), that file from `workdir`."""
    if not cli:
        return None
    if os.sep in cli:
        full = os.path.join(workdir, cli)
        return full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    return shutil.which(cli, path=path)
