"""Codex CLI, non-interactive: `codex exec PROMPT --json`
(https://github.com/openai/codex/blob/main/docs/exec.md). JSONL events: `thread.started`
(thread_id), `turn.completed` (usage), `turn.failed` (error), `error`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agentjobs.agents import Verdict, classify_text, events
from agentjobs.spec import AgentSpec


class Codex:
    def argv(self, agent: AgentSpec, prompt: str, resume: str | None) -> list[str]:
        argv = ["codex", "exec", prompt, "--json", "--sandbox", agent.sandbox or "workspace-write"]
        if agent.model:
            argv += ["--model", agent.model]
        return argv + list(agent.extra_args)

    def judge(self, output: str, exit_code: int | None, agent: AgentSpec, now: datetime) -> Verdict:
        facts: dict[str, Any] = {}
        errors: list[str] = []
        for event in events(output):
            kind = event.get("type")
            if kind == "thread.started":
                facts["thread_id"] = event.get("thread_id")
            elif kind == "turn.completed" and isinstance(event.get("usage"), dict):
                facts["usage"] = event["usage"]
            elif kind == "turn.failed":
                errors.append(str((event.get("error") or {}).get("message") or "turn failed"))
            elif kind == "error":
                errors.append(str(event.get("message") or "error"))
        if not errors and exit_code == 0:
            return Verdict("succeeded", facts=facts)
        text = "\n".join(errors) or output[-65536:]
        verdict = classify_text(text, agent.rate_limit_patterns, now)
        if verdict is not None:
            return Verdict(
                verdict.outcome, verdict.error, verdict.permanent, verdict.reset_at, facts
            )
        if errors:
            return Verdict("failed", f"codex reported: {errors[-1][:500]}", facts=facts)
        return Verdict(None, facts=facts)
