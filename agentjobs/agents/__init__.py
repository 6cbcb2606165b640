"""Agent presets: turn `agent: {kind, prompt, ...}` into a headless command line.

Each CLI's documented non-interactive form; the prompt is one argv element, never interpolated
into a shell string.
- claude: `claude -p PROMPT --output-format stream-json --verbose` (Claude Code headless mode,
  docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless); stream-json keeps output flowing, so
  silence detection stays meaningful.
- codex: `codex exec PROMPT --json` (Codex CLI non-interactive mode, `codex exec`).
- gemini: `gemini -p PROMPT --output-format stream-json` (Gemini CLI headless mode).
- aider: `aider --message PROMPT --yes-always` (aider scripting: `--message` runs one
  instruction and exits).
"""

from __future__ import annotations

from pathlib import Path

from agentjobs.errors import UserError
from agentjobs.spec import AgentSpec

DEFAULT_PERMISSION_MODE = "acceptEdits"


def prompt_text(agent: AgentSpec) -> str:
    if agent.prompt is not None:
        return agent.prompt
    assert agent.prompt_file is not None
    try:
        return Path(agent.prompt_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"prompt file {agent.prompt_file}: {exc.strerror}") from None


def build_argv(agent: AgentSpec, prompt: str) -> list[str]:
    """The agent's command line for one attempt with `prompt`."""
    if agent.kind == "claude":
        argv = [
            "claude",
            "-p",
            prompt,
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            agent.permission_mode or DEFAULT_PERMISSION_MODE,
        ]
        if agent.model:
            argv += ["--model", agent.model]
        if agent.max_turns:
            argv += ["--max-turns", str(agent.max_turns)]
        if agent.allowed_tools:
            argv += ["--allowedTools", ",".join(agent.allowed_tools)]
    elif agent.kind == "codex":
        argv = ["codex", "exec", prompt, "--json", "--sandbox", "workspace-write"]
        if agent.model:
            argv += ["--model", agent.model]
    elif agent.kind == "gemini":
        argv = ["gemini", "-p", prompt, "--output-format", "stream-json"]
        if agent.model:
            argv += ["--model", agent.model]
    elif agent.kind == "aider":
        argv = ["aider", "--message", prompt, "--yes-always", "--no-auto-commits"]
        if agent.model:
            argv += ["--model", agent.model]
    else:
        raise UserError(f"unknown agent kind {agent.kind!r}")
    return argv + list(agent.extra_args)
