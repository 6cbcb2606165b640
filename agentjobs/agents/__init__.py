"""Agent presets: `agent: {kind, prompt, ...}` to a headless command line, and its output back to
an outcome.

Each preset (one module per agent CLI) builds argv from the CLI's documented non-interactive
flags - the prompt is one argv element, never part of a shell string - and judges the output:
agents say "I failed" while exiting 0, hit usage limits, or fail in ways a retry cannot fix.
Structured fields are read first, text patterns second.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from agentjobs.errors import UserError
from agentjobs.spec import AgentSpec

DEFAULT_CORRECTIVE_TEMPLATE = (
    "\n\n---\nA previous attempt at this task (attempt {attempt}) did not succeed: {outcome}"
    "{error}.\nThe last lines of its output were:\n```\n{output}\n```\n"
    "Find out what went wrong and finish the task."
)
CORRECTIVE_OUTPUT_BYTES = 8192
# what a judge is given: the last 256 KiB of the attempt's log (attempt._judged)
JUDGED_BYTES = 262144


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an agent's output says about an attempt that ran to its end."""

    # None: the exit code decides; else succeeded, failed, rate_limited or no_change (`hollow`)
    outcome: str | None = None
    error: str | None = None
    permanent: bool = False  # a retry cannot fix it (auth, invalid request)
    reset_at: datetime | None = None  # when a usage limit lifts
    facts: dict[str, Any] = field(default_factory=dict)  # for the run record, under `agent`


class Preset(Protocol):
    def argv(self, agent: AgentSpec, prompt: str, resume: str | None) -> list[str]:
        """The command line for one attempt (`resume`: a session id to continue, if any)."""
        ...

    def judge(self, output: str, exit_code: int | None, agent: AgentSpec, now: datetime) -> Verdict:
        """The verdict on a finished attempt from its output and exit code."""
        ...


def preset(kind: str) -> Preset:
    from agentjobs.agents import aider, claude, codex, custom, gemini

    presets: dict[str, Preset] = {
        "claude": claude.Claude(),
        "codex": codex.Codex(),
        "gemini": gemini.Gemini(),
        "aider": aider.Aider(),
        "custom": custom.Custom(),
    }
    try:
        return presets[kind]
    except KeyError:
        raise UserError(f"unknown agent kind {kind!r}") from None


def prompt_text(agent: AgentSpec) -> str:
    if agent.prompt is not None:
        return agent.prompt
    assert agent.prompt_file is not None
    try:
        return Path(agent.prompt_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"prompt file {agent.prompt_file}: {exc.strerror}") from None


def corrective_section(
    template: str | None, attempt: int, outcome: str, error: str | None, output: str
) -> str:
    """What a corrective retry adds to the prompt: bounded to the last 8 KiB of output (which
    the runner already redacted)."""
    tail = output.encode()[-CORRECTIVE_OUTPUT_BYTES:].decode(errors="ignore").strip("\n")
    return (template or DEFAULT_CORRECTIVE_TEMPLATE).format(
        attempt=attempt, outcome=outcome, error=f" ({error})" if error else "", output=tail
    )


def events(output: str) -> Iterator[dict[str, Any]]:
    """The JSON objects among the output's lines (stream-json), skipping anything else."""
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


# -- limits and failures a retry cannot fix, from text ------------------------------------------

_AUTH = re.compile(
    r"not logged in|invalid api key|authentication[_ ]error|unauthori[sz]ed|\b401\b|"
    r"\b403\b|please run /login|permission[_ ]denied.*api|api key.*(missing|not set|invalid)",
    re.IGNORECASE,
)
_RATE = re.compile(
    r"usage limit reached|rate[_ ]limit(ed| reached|_error| exceeded)?|hit your limit|"
    r"hit your usage limit|exhausted your (daily )?quota|"
    r"too many requests|\b429\b|quota exceeded|resource[_ ]exhausted",
    re.IGNORECASE,
)
# money, not a usage window: the plan or the balance must change first (OpenAI's
# `insufficient_quota`); never retried as a usage limit, which would retry it forever
_BILLING = re.compile(r"insufficient_quota|check your plan and billing", re.IGNORECASE)
# codex: "...or try again at 2:44 PM." / "...try again at Sep 29th, 2026 12:55 AM." (the
# machine's local time: no zone is printed)
_TRY_AGAIN = re.compile(
    r"try again at\s+(?:([A-Za-z]{3})[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4}),?\s+)?"
    r"(\d{1,2}):(\d{2})\s*([AP]M)",
    re.IGNORECASE,
)
_MONTHS = {
    m: n
    for n, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_OVERLOADED = re.compile(r"overloaded|\b529\b|\b50[0234]\b|internal server error", re.IGNORECASE)
_EPOCH = re.compile(r"usage limit reached\|(\d{9,11})", re.IGNORECASE)
_RESETS_AT = re.compile(
    r"resets\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*([ap]m)?\s*\(([A-Za-z_]+(?:/[A-Za-z_+-]+)*)\)",
    re.IGNORECASE,
)


def reset_from_text(text: str, now: datetime) -> datetime | None:
    """A usage-limit reset time in text: `...usage limit reached|1732460400` (epoch) or
    `resets 4pm (Europe/Warsaw)` (the next such wall-clock time in that zone)."""
    from datetime import UTC

    epoch = _EPOCH.search(text)
    if epoch:
        return datetime.fromtimestamp(int(epoch.group(1)), UTC)
    again = _TRY_AGAIN.search(text)
    if again:
        return _local_reset(again, now)
    match = _RESETS_AT.search(text)
    if match:
        hour, minute, half, zone = match.groups()
        try:
            tz = ZoneInfo(zone)
        except Exception:  # not a zone name we know: no reset time
            return None
        h = int(hour)
        if half:  # 12am is midnight, 12pm noon
            h = h % 12 + (12 if half.lower() == "pm" else 0)
        local = now.astimezone(tz).replace(
            hour=h % 24, minute=int(minute or 0), second=0, microsecond=0
        )
        if local <= now:
            local += timedelta(days=1)
        return local.astimezone(UTC)
    return None


def _local_reset(found: re.Match[str], now: datetime) -> datetime | None:
    """A `try again at` time in this machine's zone: on the date given, else the next one."""
    from datetime import UTC

    month, day, year, hour, minute, half = found.groups()
    h = int(hour) % 12 + (12 if half.upper() == "PM" else 0)
    local_now = now.astimezone()  # no zone argument: the machine's
    try:
        if year:
            number = _MONTHS.get(month[:3].lower())
            if number is None:
                return None
            moment = datetime(int(year), number, int(day), h, int(minute)).astimezone()
        else:
            moment = local_now.replace(hour=h, minute=int(minute), second=0, microsecond=0)
            if moment <= local_now:
                moment += timedelta(days=1)
    except ValueError:  # not a real date
        return None
    return moment.astimezone(UTC)


def message_of(text: str) -> str:
    """The human message in an error text that may be a JSON body (`{"error": {"message":
    ...}}`), else the text itself: records say what the CLI said, not a JSON fragment."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return text


def agent_env(agent: AgentSpec) -> dict[str, str]:
    """What an unattended attempt of this agent needs in its environment: Gemini CLI refuses a
    workdir nobody trusted interactively (exit 55) unless told to trust it."""
    if agent.kind == "gemini":
        return {"GEMINI_CLI_TRUST_WORKSPACE": "true"}
    return {}


def whole(output: str) -> bool:
    """Whether a judge's `output` is the attempt's whole log, not the last `JUDGED_BYTES` of a
    longer one: what a tail lacks may have been printed before it (codex's thread id and
    gemini's session id are in the first event). The log was decoded with `errors="replace"`,
    which never makes it shorter."""
    return len(output.encode()) < JUDGED_BYTES


def hollow(kind: str, session: object, turns: int | None) -> str | None:
    """Why a run its CLI reported as a success did no real work, or None (issue 15): an agent
    that streams sessions (claude, codex, gemini) succeeds only with a session id and at least
    one turn; a hollow run is `no_change`, retried by the retry rules. `turns` is None when the
    CLI did not say: only what it prints is judged."""
    if not session:
        why = "no session id"
    elif turns is not None and turns < 1:
        why = f"{turns} turns"
    else:
        return None
    return f"hollow run: {kind} reported success without a real session ({why})"


def classify_text(text: str, extra_patterns: Sequence[str], now: datetime) -> Verdict | None:
    """A verdict from text alone, or None when the text says nothing we recognise."""
    billing = _BILLING.search(text)
    if billing:
        line = next((x for x in text.splitlines() if _BILLING.search(x)), billing.group(0))
        return Verdict(
            "failed",
            f"billing: {message_of(line.strip())[:300]} (a retry cannot fix this; check the "
            "account's plan and balance)",
            permanent=True,
        )
    for pattern in extra_patterns:
        if re.search(pattern, text, re.MULTILINE):
            return Verdict(
                "rate_limited",
                f"usage or rate limit (/{pattern}/)",
                reset_at=reset_from_text(text, now),
            )
    if _RATE.search(text):
        found = _RATE.search(text)
        assert found is not None
        return Verdict(
            "rate_limited",
            f"usage or rate limit: {found.group(0)}",
            reset_at=reset_from_text(text, now),
        )
    if _AUTH.search(text):
        found = _AUTH.search(text)
        assert found is not None
        return Verdict(
            "failed",
            f"authentication failed ({found.group(0)}): log the agent CLI "
            "in, or set its API key or token in the job's env_file",
            permanent=True,
        )
    if _OVERLOADED.search(text):
        return Verdict("failed", "the agent's API is overloaded or failing (retryable)")
    return None


def build_argv(agent: AgentSpec, prompt: str, resume: str | None = None) -> list[str]:
    """The agent's command line for one attempt with `prompt`."""
    return preset(agent.kind).argv(agent, prompt, resume)
