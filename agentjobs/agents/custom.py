"""Any other agent: `kind: custom` runs `command` with the prompt as its last argument.
`output: stream-json` means a final `{"type": "result"}` event with `is_error` decides (the shape
Claude Code and several other agents use); `output: text` means the exit code decides."""

from __future__ import annotations

from datetime import datetime

from agentjobs.agents import Verdict, classify_text, events
from agentjobs.spec import AgentSpec


class Custom:
    def argv(self, agent: AgentSpec, prompt: str, resume: str | None) -> list[str]:
        return [*agent.command, *agent.extra_args, prompt]

    def judge(self, output: str, exit_code: int | None, agent: AgentSpec, now: datetime) -> Verdict:
        if agent.output == "stream-json":
            results = [e for e in events(output) if e.get("type") == "result"]
            if not results:
                return Verdict("failed", "the agent ended without a result event")
            if results[-1].get("is_error"):
                message = str(results[-1].get("result") or "error")
                verdict = classify_text(message, agent.rate_limit_patterns, now)
                return verdict or Verdict("failed", f"the agent reported an error: {message}")
        if exit_code != 0:
            verdict = classify_text(output[-65536:], agent.rate_limit_patterns, now)
            if verdict is not None:
                return verdict
        return Verdict(None)
