"""aider, scripted: `aider --message PROMPT --yes-always` (https://aider.chat/docs/scripting.html).
`--no-auto-commits` unless the job allows commits. In this mode aider declines to run shell
commands it proposes (README)."""

from __future__ import annotations

from datetime import datetime

from agentjobs.agents import Verdict, classify_text
from agentjobs.spec import AgentSpec


class Aider:
    def argv(self, agent: AgentSpec, prompt: str, resume: str | None) -> list[str]:
        argv = ["aider", "--message", prompt, "--yes-always"]
        if not agent.allow_commits:
            argv.append("--no-auto-commits")
        if agent.model:
            argv += ["--model", agent.model]
        return argv + list(agent.extra_args)

    def judge(self, output: str, exit_code: int | None, agent: AgentSpec, now: datetime) -> Verdict:
        if exit_code == 0 and not agent.rate_limit_patterns:
            return Verdict("succeeded")
        verdict = classify_text(output[-65536:], agent.rate_limit_patterns, now)
        if verdict is not None and (exit_code != 0 or verdict.outcome == "rate_limited"):
            return verdict
        return Verdict(None)
