"""Codex CLI, non-interactive: `codex exec PROMPT --json`
(https://github.com/openai/codex/blob/main/docs/exec.md). JSONL events: `thread.started`
(thread_id), `turn.completed` (usage), `turn.failed` (error), `error`. A success needs a real
session (issue 15): exit 0 without a `thread.started` thread id, or without a `turn.completed`,
is a hollow run (`no_change`); 0.171.0 prints `thread.started` first and a `turn.completed` for
each turn it completes. Judged only when the whole output is in view: the thread id is in its
first event."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from agentjobs.agents import Verdict, classify_text, events, hollow, message_of, whole
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
        turns = 0
        for event in events(output):
            kind = event.get("type")
            if kind == "thread.started":
                facts["thread_id"] = event.get("thread_id")
            elif kind == "turn.completed":
                # errors before a completed turn were transient: codex reconnected and retried
                # by itself ("Reconnecting... 1/5 (...)"), as claude's api_retry events are
                errors = []
                turns += 1
                if isinstance(event.get("usage"), dict):
                    facts["usage"] = event["usage"]
            elif kind == "turn.failed":
                errors.append(message_of(str((event.get("error") or {}).get("message") or "")))
            elif kind == "error":
                errors.append(message_of(str(event.get("message") or "error")))
        errors = [e for e in errors if e]
        if not errors and exit_code == 0:
            hollow_run = hollow("codex", facts.get("thread_id"), turns) if whole(output) else None
            if hollow_run is not None:
                return Verdict("no_change", hollow_run, facts=facts)
            return Verdict("succeeded", facts=facts)
        text = "\n".join(errors) or output[-65536:]
        no_git = _NO_GIT.search(output)
        if no_git:
            return Verdict(
                "failed",
                f"codex: {no_git.group(0).strip()} (the workdir must be a git repository: "
                "run `git init` there, or add --skip-git-repo-check to the agent's extra_args)",
                permanent=True,
                facts=facts,
            )
        verdict = classify_text(text, agent.rate_limit_patterns, now)
        if verdict is not None:
            return Verdict(
                verdict.outcome, verdict.error, verdict.permanent, verdict.reset_at, facts
            )
        if errors:
            return Verdict("failed", f"codex reported: {errors[-1][:500]}", facts=facts)
        return Verdict(None, facts=facts)


# `^.*` (one try per line), not `[^\n]*` (one per character: minutes on a 256 KiB line)
_NO_GIT = re.compile(r"^.*--skip-git-repo-check was not specified.*$", re.MULTILINE)
