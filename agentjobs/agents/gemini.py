"""Gemini CLI, headless: `gemini -p PROMPT --output-format stream-json`
(https://github.com/google-gemini/gemini-cli/blob/main/docs/cli/headless.md). Its documented
exit codes: 41 authentication, 42 input error, 44 sandbox error, 52 configuration error (a retry
cannot fix these), 53 turn limit reached (can)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agentjobs.agents import Verdict, classify_text, events
from agentjobs.spec import AgentSpec

PERMANENT_EXITS = {
    41: "authentication failed: set GEMINI_API_KEY or log the CLI in",
    42: "the input was invalid (exit 42)",
    44: "the sandbox failed (exit 44)",
    52: "the configuration is invalid (exit 52)",
}


class Gemini:
    def argv(self, agent: AgentSpec, prompt: str, resume: str | None) -> list[str]:
        argv = [
            "gemini",
            "-p",
            prompt,
            "--output-format",
            "stream-json",
            "--approval-mode",
            agent.approval_mode or "auto_edit",
        ]
        if agent.model:
            argv += ["--model", agent.model]
        return argv + list(agent.extra_args)

    def judge(self, output: str, exit_code: int | None, agent: AgentSpec, now: datetime) -> Verdict:
        facts: dict[str, Any] = {}
        error = None
        for event in events(output):
            if event.get("type") == "init":
                facts["session_id"] = event.get("session_id")
            elif event.get("type") == "result":
                facts["stats"] = event.get("stats")
                if event.get("status") not in (None, "success"):
                    error = str((event.get("error") or {}).get("message") or event.get("status"))
            elif event.get("type") == "error":
                error = str(event.get("message") or "error")
        if exit_code in PERMANENT_EXITS:
            return Verdict("failed", PERMANENT_EXITS[exit_code], permanent=True, facts=facts)
        if exit_code == 0 and error is None:
            return Verdict("succeeded", facts=facts)
        verdict = classify_text(error or output[-65536:], agent.rate_limit_patterns, now)
        if verdict is not None:
            return Verdict(
                verdict.outcome, verdict.error, verdict.permanent, verdict.reset_at, facts
            )
        if exit_code == 53:
            return Verdict("failed", "the turn limit was reached (exit 53)", facts=facts)
        return Verdict("failed" if error else None, error, facts=facts)
