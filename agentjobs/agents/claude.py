"""Claude Code, headless: `claude -p PROMPT --output-format stream-json --verbose`.

Flags from the Claude Code CLI reference and headless-mode docs
(https://docs.anthropic.com/en/docs/claude-code/cli-reference,
https://docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless). stream-json keeps output
flowing, so silence detection means "hung". Success is the final `{"type": "result"}` event's
verdict, not the exit code: `is_error: true` or a `subtype` other than `success` fails even with
exit 0, and no result event at all is a failure. A success needs a real session (issue 15): a
result without a session id, or with `num_turns: 0`, is a hollow run (`no_change`). 2.1.332
prints `session_id` in its init and result events and `num_turns` in its result; a prompt that
is a local slash command (`/cost`, `/compact`) ends `success` with `num_turns: 0` and no model
call. A result without `num_turns` is not judged by its turns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agentjobs.agents import Verdict, classify_text, events, hollow, reset_from_text
from agentjobs.spec import AgentSpec

# Unattended jobs cannot answer permission prompts: edits are accepted, other tools follow
# allowed_tools; bypassPermissions only when the job says so.
DEFAULT_PERMISSION_MODE = "acceptEdits"


class Claude:
    def argv(self, agent: AgentSpec, prompt: str, resume: str | None) -> list[str]:
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
        if resume:
            argv += ["--resume", resume]
        if agent.model:
            argv += ["--model", agent.model]
        if agent.max_turns:
            argv += ["--max-turns", str(agent.max_turns)]
        if agent.allowed_tools:
            argv += ["--allowedTools", ",".join(agent.allowed_tools)]
        if agent.disallowed_tools:
            argv += ["--disallowedTools", ",".join(agent.disallowed_tools)]
        if agent.append_system_prompt:
            argv += ["--append-system-prompt", agent.append_system_prompt]
        if agent.max_budget_usd is not None:
            argv += ["--max-budget-usd", f"{agent.max_budget_usd:g}"]
        return argv + list(agent.extra_args)

    def judge(self, output: str, exit_code: int | None, agent: AgentSpec, now: datetime) -> Verdict:
        result: dict[str, Any] | None = None
        session = None
        api_retries = 0
        rejected: dict[str, Any] | None = None
        for event in events(output):
            kind = event.get("type")
            if kind == "result":
                result = event
            elif kind == "system" and event.get("subtype") == "init":
                session = event.get("session_id") or session
            elif kind == "system" and event.get("subtype") == "api_retry":
                api_retries += 1  # the CLI retrying by itself: neither progress nor failure
            elif kind == "rate_limit_event":
                info = event.get("rate_limit_info") or {}
                if info.get("status") == "rejected":  # most of these events say "allowed"
                    rejected = info
        facts: dict[str, Any] = {"api_retries": api_retries}
        if session:
            facts["session_id"] = session
        if result is not None:
            for key in (
                "session_id",
                "num_turns",
                "total_cost_usd",
                "duration_ms",
                "usage",
                "subtype",
                "is_error",
            ):
                if key in result:
                    facts[key] = result[key]
        reset = None
        if rejected is not None and isinstance(rejected.get("resetsAt"), int | float):
            reset = datetime.fromtimestamp(rejected["resetsAt"], UTC)
        if result is None:
            text_verdict = classify_text(output[-65536:], agent.rate_limit_patterns, now)
            if text_verdict is not None:
                return _with(text_verdict, facts, reset)
            if rejected is not None:
                return Verdict("rate_limited", "usage limit reached", reset_at=reset, facts=facts)
            return Verdict("failed", "claude ended without a result event", facts=facts)
        failed = bool(result.get("is_error")) or result.get("subtype", "success") != "success"
        if not failed and exit_code not in (0, None):
            return Verdict(None, facts=facts)
        if not failed:
            turns = result.get("num_turns")
            hollow_run = hollow(
                "claude",
                result.get("session_id") or session,
                turns if isinstance(turns, int) else None,
            )
            if hollow_run is not None:
                return Verdict("no_change", hollow_run, facts=facts)
            return Verdict("succeeded", facts=facts)
        return _failure(result, rejected is not None, reset, agent, now, facts)


def _failure(
    result: dict[str, Any],
    rejected: bool,
    reset: datetime | None,
    agent: AgentSpec,
    now: datetime,
    facts: dict[str, Any],
) -> Verdict:
    """A result event that reports an error: auth and bad requests are permanent; a usage
    or rate limit (status 429, a rejected rate_limit_event, or its words) is held."""
    message = str(result.get("result") or result.get("subtype") or "error")
    status = result.get("api_error_status")
    if status in (401, 403):
        return Verdict(
            "failed",
            f"authentication failed (API status {status}): {message}",
            permanent=True,
            facts=facts,
        )
    if status == 400:
        return Verdict(
            "failed",
            f"the API refused the request (400): {message}",
            permanent=True,
            facts=facts,
        )
    if status == 429 or rejected:
        return Verdict(
            "rate_limited",
            f"usage or rate limit: {message}",
            reset_at=reset or reset_from_text(message, now),
            facts=facts,
        )
    text_verdict = classify_text(message, agent.rate_limit_patterns, now)
    if text_verdict is not None:
        return _with(text_verdict, facts, reset)
    return Verdict("failed", _error(result), facts=facts)


def _error(result: dict[str, Any]) -> str:
    """What a failed result event says: its text, and its subtype when that is not `success`
    (an `is_error` result with subtype `success` is an error all the same: never "claude
    reported an error (success)", issue 13)."""
    subtype = result.get("subtype")
    text = str(result.get("result") or "").strip()[:500]
    kind = f" ({subtype})" if subtype and subtype != "success" else ""
    return f"claude reported an error{kind}: {text}" if text else f"claude reported an error{kind}"


def _with(verdict: Verdict, facts: dict[str, Any], reset: datetime | None) -> Verdict:
    return Verdict(
        verdict.outcome, verdict.error, verdict.permanent, verdict.reset_at or reset, facts
    )
