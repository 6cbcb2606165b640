"""An attempt's log rendered for people: `agentjobs logs RUN_ID --pretty`.

A log is the raw stdout and stderr of the attempt: JSON event lines from an agent's streaming
output mixed with plain text (banners, warnings, our own `[agentjobs]` notes). Plain lines are
printed as they are; events become one short line each, with a prefix saying what they are.
The event shapes, from each CLI's headless output:

- Claude Code `--output-format stream-json --verbose`: `system` (subtype `init`, `api_retry`),
  `assistant` and `user` messages whose `content` holds `text`, `thinking`, `tool_use` and
  `tool_result` blocks, `rate_limit_event`, and a final `result` (cost, turns, duration, text).
- Codex `codex exec --json`: `thread.started`, `turn.started`, `item.started|updated|completed`
  (items: `agent_message`, `reasoning`, `command_execution`, `file_change`, `mcp_tool_call`,
  `web_search`, `todo_list`, `plan`, `error`), `turn.completed` (usage), `turn.failed`, `error`
  (codex-rs/exec/src/exec_events.rs).
- Gemini CLI `--output-format stream-json`: `init`, `message` (assistant text arrives in `delta`
  chunks, joined here into one message), `tool_use`, `tool_result`, `error`, `result` (stats)
  (packages/core/src/output/types.ts).

Anything else is shown as one line of compact JSON. Long tool inputs and outputs are cut at
`LIMIT` characters with a marker; the final answer is shown whole.
"""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any

LIMIT = 300

# (style name, line) pairs are styled at the end, and only when asked (stdout is a terminal).
_STYLES: dict[str, dict[str, Any]] = {
    "plain": {},
    "assistant": {"fg": "cyan"},
    "tool": {"fg": "yellow"},
    "dim": {"dim": True},
    "ok": {"fg": "green", "bold": True},
    "error": {"fg": "red"},
    "alert": {"fg": "red", "bold": True},
}

Lines = list[tuple[str, str]]


def render(text: str, color: bool = False) -> list[str]:
    """Every line of a whole log, rendered."""
    transcript = Transcript(color)
    return transcript.feed(text.encode("utf-8", errors="replace")) + transcript.finish()


class Transcript:
    """Renders a log as it grows: `feed` bytes as they arrive, `finish` at the end.

    Only whole lines are rendered; a partial last line waits for the rest (or `finish`).
    """

    def __init__(self, color: bool = False) -> None:
        self.color = color
        self._pending = b""
        self._chunks: list[str] = []  # Gemini assistant text arriving as `delta` messages
        self._tools: dict[str, str] = {}  # tool call id -> tool name, to name their results

    def feed(self, data: bytes) -> list[str]:
        *whole, self._pending = (self._pending + data).split(b"\n")
        out: list[str] = []
        for raw in whole:
            out += self.line(raw.decode("utf-8", errors="replace"))
        return out

    def finish(self) -> list[str]:
        out: list[str] = []
        if self._pending:
            raw, self._pending = self._pending, b""
            out += self.line(raw.decode("utf-8", errors="replace"))
        return out + self._styled(self._flush_message())

    def line(self, text: str) -> list[str]:
        """The rendering of one log line (none while a streamed message is still arriving)."""
        text = text.rstrip("\r")
        event = _event(text)
        if event is None:
            return self._styled([*self._flush_message(), ("plain", text)])
        if (
            event.get("type") == "message"
            and event.get("role") == "assistant"
            and event.get("delta")
        ):
            self._chunks.append(str(event.get("content", "")))
            return []
        return self._styled([*self._flush_message(), *self._render(event)])

    # -- dispatch ------------------------------------------------------------------------------

    def _render(self, event: dict[str, Any]) -> Lines:
        kind = event.get("type")
        if kind == "system":
            return _claude_system(event)
        if kind == "assistant":
            return self._claude_assistant(event)
        if kind == "user":
            return self._claude_user(event)
        if kind == "rate_limit_event":
            return _claude_rate_limit(event)
        if kind == "stream_event":
            return []  # partial-message deltas (--include-partial-messages); the whole follows
        if kind == "result":
            is_claude = any(k in event for k in ("subtype", "num_turns", "total_cost_usd"))
            return _claude_result(event) if is_claude else _gemini_result(event)
        if isinstance(kind, str) and kind.startswith(("thread.", "turn.", "item.")):
            return self._codex(event)
        if kind == "error":
            if event.get("severity") == "warning":
                return [("dim", f"warning: {event.get('message', '')}")]
            return [("error", f"error: {event.get('message', '')}")]
        if kind == "init":
            return [("dim", _facts("init:", model=event.get("model"), session=_session(event)))]
        if kind == "message":
            prefix = "assistant:" if event.get("role") == "assistant" else "user:"
            content = str(event.get("content", ""))
            if prefix == "user:":
                return [("dim", line) for line in _block(prefix, _cut(content))]
            return [("assistant", line) for line in _block(prefix, content)]
        if kind == "tool_use":
            return self._tool_call(
                event.get("tool_id"), event.get("tool_name"), event.get("parameters")
            )
        if kind == "tool_result":
            return self._gemini_tool_result(event)
        return [("dim", _cut(_compact(event)))]

    def _flush_message(self) -> Lines:
        if not self._chunks:
            return []
        text, self._chunks = "".join(self._chunks), []
        return [("assistant", line) for line in _block("assistant:", text)]

    def _styled(self, lines: Lines) -> list[str]:
        if not self.color:
            return [line for _, line in lines]
        import click

        return [
            click.style(line, **_STYLES[style]) if line and _STYLES[style] else line
            for style, line in lines
        ]

    # -- shared pieces -------------------------------------------------------------------------

    def _tool_call(self, call_id: Any, name: Any, arguments: Any) -> Lines:
        name = str(name or "?")
        if call_id:
            self._tools[str(call_id)] = name
        return [("tool", line) for line in _block(f"tool {name}:", _cut(_arguments(arguments)))]

    def _tool_output(self, call_id: Any, output: str, error: bool, detail: str = "") -> Lines:
        name = self._tools.get(str(call_id), "") if call_id else ""
        word = "error" if error else "result"
        prefix = f"tool {name} {word}{detail}:" if name else f"tool {word}{detail}:"
        text = _cut(output.strip("\n")) or "(no output)"
        return [("error" if error else "dim", line) for line in _block(prefix, text)]

    # -- Claude Code ---------------------------------------------------------------------------

    def _claude_assistant(self, event: dict[str, Any]) -> Lines:
        out: Lines = []
        for block in _content(event):
            kind = block.get("type")
            if kind == "text":
                out += [("assistant", line) for line in _block("assistant:", block.get("text", ""))]
            elif kind == "thinking":
                text = _cut(str(block.get("thinking", "")))
                out += [("dim", line) for line in _block("thinking:", text)] if text else []
            elif kind == "tool_use":
                out += self._tool_call(block.get("id"), block.get("name"), block.get("input"))
            else:
                out.append(("dim", _cut(_compact(block))))
        return out

    def _claude_user(self, event: dict[str, Any]) -> Lines:
        out: Lines = []
        for block in _content(event):
            kind = block.get("type")
            if kind == "tool_result":
                text = _tool_text(block.get("content"))
                out += self._tool_output(
                    block.get("tool_use_id"), text, bool(block.get("is_error"))
                )
            elif kind == "text":
                out += [("dim", line) for line in _block("user:", _cut(str(block.get("text", ""))))]
            else:
                out.append(("dim", _cut(_compact(block))))
        return out

    # -- Codex ---------------------------------------------------------------------------------

    def _codex(self, event: dict[str, Any]) -> Lines:
        kind = event["type"]
        if kind == "thread.started":
            return [("dim", _facts("init:", thread=event.get("thread_id")))]
        if kind in ("turn.started", "item.started", "item.updated"):
            return []  # the completed item says it all
        if kind == "turn.completed":
            return [("dim", f"turn completed: {_tokens(event.get('usage'))}".rstrip(": "))]
        if kind == "turn.failed":
            error = event.get("error")
            message = error.get("message", "") if isinstance(error, dict) else error
            return [("error", f"turn failed: {message}")]
        if kind == "item.completed" and isinstance(event.get("item"), dict):
            return self._codex_item(event["item"])
        return [("dim", _cut(_compact(event)))]

    def _codex_item(self, item: dict[str, Any]) -> Lines:
        kind = item.get("type")
        if kind == "agent_message":
            return [("assistant", line) for line in _block("assistant:", str(item.get("text", "")))]
        if kind == "reasoning":
            return [("dim", line) for line in _block("thinking:", _cut(str(item.get("text", ""))))]
        if kind == "plan":
            return [("assistant", line) for line in _block("plan:", str(item.get("text", "")))]
        if kind == "command_execution":
            call = self._tool_call(item.get("id"), "shell", item.get("command"))
            code = item.get("exit_code")
            failed = item.get("status") in ("failed", "declined") or code not in (0, None)
            detail = f" (exit {code})" if code is not None else f" ({item.get('status', '?')})"
            return call + self._tool_output(
                item.get("id"), str(item.get("aggregated_output") or ""), failed, detail
            )
        if kind == "file_change":
            changes = ", ".join(
                f"{c.get('kind', '?')} {c.get('path', '?')}"
                for c in item.get("changes", [])
                if isinstance(c, dict)
            )
            if item.get("status") == "failed":
                return [("error", f"file change failed: {changes}")]
            return [("tool", f"file change: {changes}")]
        if kind == "mcp_tool_call":
            name = f"{item.get('server', '?')}.{item.get('tool', '?')}"
            call = self._tool_call(item.get("id"), name, item.get("arguments"))
            error = item.get("error")
            if isinstance(error, dict):
                return call + self._tool_output(item.get("id"), str(error.get("message", "")), True)
            result = item.get("result")
            blocks = result.get("content") if isinstance(result, dict) else None
            return call + self._tool_output(item.get("id"), _tool_text(blocks), False)
        if kind == "web_search":
            return [("tool", f"tool web_search: {_cut(str(item.get('query', '')))}")]
        if kind == "todo_list":
            entries = [
                f"[{'x' if entry.get('completed') else ' '}] {entry.get('text', '')}"
                for entry in item.get("items", [])
                if isinstance(entry, dict)
            ]
            return [("dim", line) for line in _block("todo:", "\n".join(entries))]
        if kind == "error":
            return [("error", f"error: {item.get('message', '')}")]
        return [("dim", _cut(_compact(item)))]

    # -- Gemini CLI ----------------------------------------------------------------------------

    def _gemini_tool_result(self, event: dict[str, Any]) -> Lines:
        error = event.get("error")
        if event.get("status") == "error" or isinstance(error, dict):
            message = error.get("message", "") if isinstance(error, dict) else ""
            return self._tool_output(
                event.get("tool_id"), str(message or event.get("output", "")), True
            )
        return self._tool_output(event.get("tool_id"), str(event.get("output") or ""), False)


# -- Claude Code events that need no state -----------------------------------------------------


def _claude_system(event: dict[str, Any]) -> Lines:
    subtype = event.get("subtype")
    if subtype == "init":
        line = _facts("init:", model=event.get("model"), session=_session(event))
        tools = event.get("tools")
        if isinstance(tools, list):
            line += f", {len(tools)} tools"
        if event.get("permissionMode"):
            line += f", permission mode {event['permissionMode']}"
        return [("dim", line)]
    if subtype == "api_retry":
        line = "API retry"
        if event.get("attempt") is not None:
            line += f" {event['attempt']}"
            if event.get("max_retries") is not None:
                line += f"/{event['max_retries']}"
        why = [str(event["error"])] if event.get("error") else []
        if event.get("error_status") is not None:
            why.append(f"HTTP {event['error_status']}")
        if why:
            line += f": {', '.join(why)}"
        if isinstance(event.get("retry_delay_ms"), int | float):
            line += f"; next try in {_duration(event['retry_delay_ms'])}"
        return [("dim", line)]
    return [("dim", _cut(_compact(event)))]


def _claude_rate_limit(event: dict[str, Any]) -> Lines:
    info = event.get("rate_limit_info")
    info = info if isinstance(info, dict) else {}
    status = info.get("status")
    if status == "allowed":
        return []  # sent with every request; only a limit being near or hit is news
    which = f"{info['rateLimitType']} " if info.get("rateLimitType") else ""
    resets = info.get("resetsAt")
    when = ""
    if isinstance(resets, int | float):
        when = f"; resets {datetime.fromtimestamp(resets, UTC):%Y-%m-%d %H:%M} UTC"
    if status == "rejected":
        return [("alert", f"RATE LIMITED: {which}limit reached{when}")]
    return [("dim", f"rate limit {status}: {which}limit{when}")]


def _claude_result(event: dict[str, Any]) -> Lines:
    subtype = str(event.get("subtype") or "?")
    failed = bool(event.get("is_error")) or subtype != "success"
    label = "error" if failed and subtype == "success" else subtype
    facts = []
    if isinstance(event.get("duration_ms"), int | float):
        facts.append(_duration(event["duration_ms"]))
    if isinstance(event.get("num_turns"), int):
        facts.append(f"{event['num_turns']} turn{'s' * (event['num_turns'] != 1)}")
    if isinstance(event.get("total_cost_usd"), int | float):
        facts.append(f"${event['total_cost_usd']:.4f}")
    tokens = _tokens(event.get("usage"))
    if tokens:
        facts.append(tokens)
    head = f"result: {label}" + (f" ({', '.join(facts)})" if facts else "")
    out: Lines = [("error" if failed else "ok", head)]
    denials = event.get("permission_denials")
    if isinstance(denials, list) and denials:
        names = [str(d.get("tool_name", "?")) for d in denials if isinstance(d, dict)]
        out.append(("error", f"  permission denied: {', '.join(names)}"))
    text = event.get("result")
    if isinstance(text, str) and text.strip():
        out += [("plain", f"  {line}".rstrip()) for line in text.strip("\n").splitlines()]
    return out


def _gemini_result(event: dict[str, Any]) -> Lines:
    status = str(event.get("status") or "?")
    facts = []
    stats = event.get("stats")
    if isinstance(stats, dict):
        if isinstance(stats.get("duration_ms"), int | float):
            facts.append(_duration(stats["duration_ms"]))
        if isinstance(stats.get("tool_calls"), int):
            facts.append(f"{stats['tool_calls']} tool call{'s' * (stats['tool_calls'] != 1)}")
        tokens = _tokens(stats)
        if tokens:
            facts.append(tokens)
    head = f"result: {status}"
    error = event.get("error")
    if isinstance(error, dict) and error.get("message"):
        head += f": {error['message']}"
    head += f" ({', '.join(facts)})" if facts else ""
    return [("ok" if status == "success" else "error", head)]


def final_message(text: str) -> str | None:
    """The agent's last word in a log: claude's `result` text, codex's last agent message,
    gemini's assistant text since its last user turn; for a plain command, its last lines."""
    last: str | None = None
    chunks: list[str] = []
    plain: list[str] = []
    for line in text.splitlines():
        event = _event(line)
        if event is None:
            if line.strip() and not line.startswith("[agentjobs]"):
                plain = [*plain[-19:], line]
            continue
        kind = event.get("type")
        item = event.get("item")
        if kind == "result" and isinstance(event.get("result"), str):
            last = event["result"]
        elif kind == "item.completed" and isinstance(item, dict):
            if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                last = item["text"]
        elif kind == "message" and event.get("role") == "assistant":
            chunks.append(str(event.get("content", "")))
            last = "".join(chunks)
        elif kind == "message":
            chunks = []
    if last is not None:
        return last.strip() or None
    return "\n".join(plain) or None


# -- helpers -----------------------------------------------------------------------------------


def _event(text: str) -> dict[str, Any] | None:
    """The JSON object on this line, or None for plain text."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _content(event: dict[str, Any]) -> list[dict[str, Any]]:
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return []
    return [
        block if isinstance(block, dict) else {"type": "?", "value": block} for block in content
    ]


def _tool_text(content: Any) -> str:
    """A tool result's text: a string, or a list of content blocks (text, image, ...)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict) and block.get("type") == "image":
                parts.append("(image)")
            else:
                parts.append(_compact(block))
        return "\n".join(parts)
    return _compact(content)


def _arguments(value: Any) -> str:
    """A tool call's input, short: a shell command as the command line, else compact JSON."""
    command = value.get("command") if isinstance(value, dict) else value
    if isinstance(command, str):
        return command
    if isinstance(command, list) and all(isinstance(part, str) for part in command):
        return shlex.join(command)
    return _compact(value)


def _tokens(usage: Any) -> str:
    """`N in / M out tokens` from Claude, Codex or Gemini usage (cached input counted as input)."""
    if not isinstance(usage, dict):
        return ""
    read = usage.get("cache_read_input_tokens") or 0
    created = usage.get("cache_creation_input_tokens") or 0
    cached = usage.get("cached_input_tokens") or usage.get("cached") or 0
    given = usage.get("input_tokens")
    out = usage.get("output_tokens")
    if not isinstance(given, int) or not isinstance(out, int):
        return ""
    total = given + read + created
    cached = cached or read
    note = f" ({cached} cached)" if cached else ""
    return f"{total} in{note} / {out} out tokens"


def _facts(prefix: str, **values: Any) -> str:
    parts = [
        f"{name.replace('_', ' ')} {value}" for name, value in values.items() if value is not None
    ]
    return f"{prefix} {', '.join(parts)}".rstrip()


def _session(event: dict[str, Any]) -> Any:
    return event.get("session_id") or event.get("sessionId")


def _duration(milliseconds: float) -> str:
    from agentjobs.durations import format_duration

    return format_duration(milliseconds / 1000)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _cut(text: str, limit: int = LIMIT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more chars]"


def _block(prefix: str, text: str) -> list[str]:
    """`prefix first line`, then the other lines indented two spaces."""
    lines = text.strip("\n").splitlines() or [""]
    return [f"{prefix} {lines[0]}".rstrip()] + [f"  {line}".rstrip() for line in lines[1:]]
