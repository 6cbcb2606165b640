"""Gemini CLI, headless: `gemini -p PROMPT --output-format stream-json`
(https://github.com/google-gemini/gemini-cli/blob/main/docs/cli/headless.md). Exit codes it is
known to use: 41 authentication, 42 input error, 44 sandbox error, 52 configuration error, 55 a
workdir not trusted (a retry cannot fix these); 53 turn limit reached, 54 a fatal tool error (a
retry can); an API error ends it with the HTTP status mod 256 (0.61): 144 = 400, 145 = 401,
173 = 429 (a usage limit: daily quota, "[API Error: You have exhausted your daily quota on this
model.]"). Attempts run with GEMINI_CLI_TRUST_WORKSPACE=true (`agents.agent_env`): an
unattended runner trusts the job's workdir, which the job file names.

A success needs a real session (issue 15): 0.61 prints an `init` event with the session id,
then the user's `message`, the model's reply as assistant `message` deltas and `tool_use`
events, `tool_result`s, and a `result` whose stats count tokens and tool calls but no turns. A
turn is a model reply between tool results, as `progress.Activity` counts them (and
`pricing.Meter`, for the record's `turns`); a success without a session id, or with no reply, is
a hollow run (`no_change`), judged only when the whole output is in view: the session id is in
its first event."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from agentjobs.agents import (
    Verdict,
    classify_text,
    events,
    hollow,
    message_of,
    reset_from_text,
    whole,
)
from agentjobs.progress import Activity
from agentjobs.spec import AgentSpec

PERMANENT_EXITS = {
    41: "authentication failed: set GEMINI_API_KEY or log the CLI in",
    42: "the input was invalid (exit 42)",
    44: "the sandbox failed (exit 44)",
    52: "the configuration is invalid (exit 52)",
    # an API error ends the CLI with the HTTP status mod 256 (0.61): 401 and 400
    145: "authentication failed (HTTP 401): set GEMINI_API_KEY or log the CLI in",
    144: "the API refused the request (HTTP 400)",
    # not a trusted workdir (agentjobs sets GEMINI_CLI_TRUST_WORKSPACE=true; still refused)
    55: "the workdir is not trusted by Gemini CLI (exit 55)",
}
RETRYABLE_EXITS = {
    53: "the turn limit was reached (exit 53)",
    54: "a tool failed fatally (exit 54)",  # FATAL_TOOL_EXECUTION_ERROR
}
RATE_LIMIT_EXIT = 173  # HTTP 429 mod 256
# `^.*` (one try per line), not `[^\n]*` (one per character: minutes on a 256 KiB line)
_API_ERROR = re.compile(
    r"\[API Error: ([^\]]*)\]|^.*not running in a trusted directory.*$", re.MULTILINE
)


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
        replies = Activity("gemini")
        for event in events(output):
            replies.feed(event)
            if event.get("type") == "init":
                facts["session_id"] = event.get("session_id")
            elif event.get("type") == "result":
                facts["stats"] = event.get("stats")
                if event.get("status") not in (None, "success"):
                    error = str((event.get("error") or {}).get("message") or event.get("status"))
                    error = _unwrapped(error)
            elif event.get("type") == "error":
                error = str(event.get("message") or "error")
        said = _API_ERROR.search(output)
        if error is None and said is not None:
            error = (said.group(1) or said.group(0)).strip()
        if exit_code == RATE_LIMIT_EXIT:
            return Verdict(
                "rate_limited",
                f"usage or rate limit (HTTP 429): {error or 'exit 173'}",
                reset_at=reset_from_text(output, now) or _daily_reset(output, now),
                facts=facts,
            )
        if exit_code in PERMANENT_EXITS:
            why = PERMANENT_EXITS[exit_code] + (f": {error}" if error else "")
            return Verdict("failed", why, permanent=True, facts=facts)
        if exit_code == 0 and error is None:
            session = facts.get("session_id")
            hollow_run = hollow("gemini", session, replies.turns) if whole(output) else None
            if hollow_run is not None:
                return Verdict("no_change", hollow_run, facts=facts)
            return Verdict("succeeded", facts=facts)
        verdict = classify_text(error or output[-65536:], agent.rate_limit_patterns, now)
        if verdict is not None:
            return Verdict(
                verdict.outcome, verdict.error, verdict.permanent, verdict.reset_at, facts
            )
        if exit_code in RETRYABLE_EXITS:
            why = RETRYABLE_EXITS[exit_code] + (f": {error}" if error else "")
            return Verdict("failed", why, facts=facts)
        return Verdict("failed" if error else None, error, facts=facts)


def _unwrapped(error: str) -> str:
    """`[API Error: {"error": {"message": M, ...}}]` as `[API Error: M]`: 0.61 puts the API's
    JSON body there for a 400 or 401 (a bad key), its own message for a quota."""
    body = re.fullmatch(r"\[API Error: (\{.*\})\]", error, re.DOTALL)
    return f"[API Error: {message_of(body.group(1))}]" if body else error


def _daily_reset(output: str, now: datetime) -> datetime | None:
    """A daily quota names no reset time; Google's daily quotas reset at midnight Pacific
    time: hold until then rather than trying again every backoff all night."""
    if "daily quota" not in output.lower():
        return None
    from datetime import UTC, timedelta
    from zoneinfo import ZoneInfo

    pacific = now.astimezone(ZoneInfo("America/Los_Angeles"))
    midnight = (pacific + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(UTC)
