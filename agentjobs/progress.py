"""Live progress of a running attempt (issue 13), as BullMQ jobs report `updateProgress`.

What an attempt is doing now, kept while it runs and gone once it is settled:

- for an agent, from its stream (the same pass over its output that meters its cost,
  attempt.py): turns so far and the tool call it is in (`Activity`), the cost so far;
- for a command, what it reports: a line `::progress 40 copying files` on its output, or the
  same text (`40 copying files`) written to the file named in `AGENTJOBS_PROGRESS` (`report`);
- for both, when the output last grew (`quiet 12s`).

`Reporter` keeps it in the attempt's supervisor and writes it to the store from a thread of its
own, at most once a second and only when it changed (`Store.put_progress`): never on the path
that reads the attempt's output, and a write that fails (a full disk, the database away) is
skipped, never the attempt's failure. Readers ask `running_progress(store)` and render one with
`describe_progress(p, now)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentjobs.store import Runtime, Store

PREFIX = "::progress"  # a command's progress line: `::progress PERCENT MESSAGE`
ENV = "AGENTJOBS_PROGRESS"  # names the file a command may write its progress to instead
INTERVAL = 1.0  # seconds: a running attempt's progress is written at most this often
POLL = 0.25  # seconds between looks at the AGENTJOBS_PROGRESS file
MESSAGE_LIMIT = 200  # characters of a message that are kept
TOOL_LIMIT = 60  # characters of a tool call's argument shown


@dataclass(frozen=True, slots=True)
class Progress:
    """One running attempt's progress. Times are UTC ISO-8601 strings; `percent` and `message`
    are what a command reported last; `turns`, `tool` (the tool call in flight, e.g.
    `Bash(make test)`) and `cost_usd` (`cost_estimated`: tokens times a price, not the CLI's
    own figure) come from an agent's stream; `last_output_at` is when its output last grew
    (None: nothing yet, since `started_at`)."""

    run_id: str
    attempt: int
    updated_at: str
    started_at: str | None = None
    percent: float | None = None
    message: str | None = None
    turns: int | None = None
    tool: str | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False
    last_output_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: value
            for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) is not None
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Progress:
        """The progress `to_dict` wrote; ValueError when `data` is not one."""
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            progress = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ValueError(f"not a progress: {exc}") from None
        if not isinstance(progress.run_id, str) or not isinstance(progress.attempt, int):
            raise ValueError("not a progress: run_id or attempt missing")
        return progress


# -- reading -----------------------------------------------------------------------------------


def running_progress(store: Store, runtime: Runtime | None = None) -> dict[str, Progress]:
    """Run id -> the progress of its running attempt, for every running attempt that has one
    (`runtime`: the snapshot the caller already read). Progress left by an attempt that is no
    longer running (its supervisor was killed before it could remove it) is not shown."""
    runtime = store.runtime() if runtime is None else runtime
    running = {i.run_id: i.attempt for i in runtime.queue.values() if i.state == "running"}
    if not running:
        return {}  # the common case costs no read
    found: dict[str, Progress] = {}
    for run_id, data in store.progress().items():
        if running.get(run_id) != data.get("attempt"):
            continue
        try:
            found[run_id] = Progress.from_dict({**data, "run_id": run_id})
        except ValueError:
            continue  # a damaged entry is no progress; the attempt still shows as running
    return found


def describe_progress(progress: Progress, now: datetime) -> str:
    """One short line: `40% migrating tables · turn 3 · Bash(make test) · $0.12 · quiet 12s`
    (only the parts it has)."""
    from agentjobs.clock import parse
    from agentjobs.durations import format_duration

    parts = []
    if progress.percent is not None:
        head = f"{progress.percent:g}%"
        parts.append(f"{head} {progress.message}" if progress.message else head)
    elif progress.message:
        parts.append(progress.message)
    if progress.turns:
        parts.append(f"turn {progress.turns}")
    if progress.tool:
        parts.append(progress.tool)
    if progress.cost_usd is not None:
        parts.append(f"{'~' if progress.cost_estimated else ''}${progress.cost_usd:.2f}")
    since = progress.last_output_at or progress.started_at
    if since is not None:
        quiet = (now - parse(since)).total_seconds()
        if quiet >= 1:
            word = "quiet" if progress.last_output_at else "no output for"
            parts.append(f"{word} {format_duration(quiet)}")
    return " · ".join(parts)


# -- what a command reports ----------------------------------------------------------------


def report(text: str) -> tuple[float | None, str | None] | None:
    """A progress report's (percent, message): `40 copying` -> (40.0, "copying"), `40%` ->
    (40.0, None), `copying` -> (None, "copying"); with or without the `::progress` prefix.
    None for an empty report. A percent is clamped to 0-100."""
    text = text.strip()
    if text.startswith(PREFIX):
        text = text[len(PREFIX) :].strip()
    if not text:
        return None
    first, _, rest = text.partition(" ")
    try:
        percent = float(first.removesuffix("%"))
    except ValueError:
        return None, text[:MESSAGE_LIMIT]
    if not math.isfinite(percent):
        return None, text[:MESSAGE_LIMIT]
    message = rest.strip()[:MESSAGE_LIMIT] or None
    return min(100.0, max(0.0, percent)), message


def progress_line(line: str) -> tuple[float | None, str | None] | None:
    """The report on an output line `::progress ...`; None for any other line."""
    line = line.strip()
    if line != PREFIX and not line.startswith(PREFIX + " "):
        return None
    return report(line)


# -- what an agent is doing ----------------------------------------------------------------


@dataclass(slots=True)
class Activity:
    """An agent's turns so far and the tool call in flight, from its stream events (the shapes
    transcript.py lists): Claude Code's `assistant` messages (a turn per message id) with their
    `tool_use` blocks, answered by `tool_result` blocks in `user` messages; codex's
    `turn.started` and the `item.started`/`item.completed` of a command, MCP call or web search;
    Gemini's `message`/`tool_use`/`tool_result` (a turn per model reply between tool results).
    The final `result` (claude's `num_turns`) settles the count."""

    kind: str
    turns: int = 0
    tool: str | None = None
    calls: dict[str, str] = field(default_factory=dict)  # open tool calls: id -> label
    messages: set[str] = field(default_factory=set)  # claude message ids seen
    replying: bool = False  # gemini: the model's reply is streaming

    def feed(self, event: Mapping[str, Any]) -> bool:
        """Take one stream event; True when the turns or the tool call changed."""
        before = (self.turns, self.tool)
        kind = event.get("type")
        if kind == "result":
            if isinstance(event.get("num_turns"), int):
                self.turns = event["num_turns"]
            self.calls.clear()
        elif self.kind == "claude":
            self._claude(kind, event)
        elif self.kind == "codex":
            self._codex(kind, event)
        elif self.kind == "gemini":
            self._gemini(kind, event)
        self.tool = next(reversed(self.calls.values()), None)
        return (self.turns, self.tool) != before

    def _claude(self, kind: Any, event: Mapping[str, Any]) -> None:
        message = event.get("message")
        if not isinstance(message, Mapping):
            return
        content = message.get("content")
        blocks = [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []
        if kind == "assistant":
            # one API response arrives as several events (one per content block), one id
            ident = message.get("id")
            if not isinstance(ident, str) or ident not in self.messages:
                self.turns += 1
                if isinstance(ident, str):
                    self.messages.add(ident)
            for block in blocks:
                if block.get("type") == "tool_use":
                    self.calls[str(block.get("id"))] = tool_label(
                        block.get("name"), block.get("input")
                    )
        elif kind == "user":
            for block in blocks:
                if block.get("type") == "tool_result":
                    self.calls.pop(str(block.get("tool_use_id")), None)

    def _codex(self, kind: Any, event: Mapping[str, Any]) -> None:
        item = event.get("item")
        if kind == "turn.started":
            self.turns += 1
        elif kind in ("turn.completed", "turn.failed"):
            self.calls.clear()
        elif kind == "item.started" and isinstance(item, Mapping):
            label = _codex_call(item)
            if label is not None:
                self.calls[str(item.get("id"))] = label
        elif kind == "item.completed" and isinstance(item, Mapping):
            self.calls.pop(str(item.get("id")), None)

    def _gemini(self, kind: Any, event: Mapping[str, Any]) -> None:
        if kind in ("message", "tool_use") and event.get("role", "assistant") == "assistant":
            if not self.replying:
                self.turns += 1
                self.replying = True
            if kind == "tool_use":
                self.calls[str(event.get("tool_id"))] = tool_label(
                    event.get("tool_name"), event.get("parameters")
                )
        elif kind == "message":  # the user's: the next reply is a new turn
            self.replying = False
        elif kind == "tool_result":
            self.calls.pop(str(event.get("tool_id")), None)
            self.replying = False  # the result goes back to the model: its answer is a turn


def _codex_call(item: Mapping[str, Any]) -> str | None:
    kind = item.get("type")
    if kind == "command_execution":
        return tool_label("shell", {"command": item.get("command")})
    if kind == "mcp_tool_call":
        return tool_label(
            f"{item.get('server', '?')}.{item.get('tool', '?')}", item.get("arguments")
        )
    if kind == "web_search":
        return tool_label("web_search", {"query": item.get("query")})
    return None


# the argument that says most about a call, by the names the CLIs' tools give it
_ARGUMENTS = ("command", "file_path", "path", "absolute_path", "pattern", "url", "query", "prompt")


def tool_label(name: Any, arguments: Any) -> str:
    """`Bash(make test)`, `Read(src/app.py)`, `Grep(TODO)`; the name alone when no argument
    says much. Long arguments are cut."""
    label = str(name or "?")
    value: Any = None
    if isinstance(arguments, Mapping):
        value = next((arguments[k] for k in _ARGUMENTS if arguments.get(k)), None)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        import shlex

        value = shlex.join(value)
    if not isinstance(value, str) or not value.strip():
        return label
    text = " ".join(value.split())
    if len(text) > TOOL_LIMIT:
        text = text[: TOOL_LIMIT - 1] + "…"
    return f"{label}({text})"


# -- keeping it while the attempt runs -----------------------------------------------------


class Reporter:
    """One attempt's progress in its supervisor's process.

    `update`, `output` and `line` change it in memory (from the thread that reads the
    attempt's output: cheap, never I/O); a thread of its own writes it to the store when it
    changed, at most once a second (`INTERVAL`), and watches `file` (the attempt's
    `AGENTJOBS_PROGRESS`) for a new report. `stop()` writes the last change and ends the
    thread; the entry stays until `clear()` (once the attempt is settled)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        attempt: int,
        now: Callable[[], datetime],
        file: Path | None = None,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        from agentjobs.clock import iso

        self.store, self.now, self.file, self.redact = store, now, file, redact
        started = iso(now()) or ""
        self._progress = Progress(run_id, attempt, updated_at=started, started_at=started)
        self._lock = threading.Lock()
        self._changed = True  # the first write says the attempt started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[int, int] | None = None  # the file's (mtime_ns, size) last read
        self._tried = False  # a write was tried: the store may hold this progress
        self.writes = 0

    @property
    def progress(self) -> Progress:
        with self._lock:
            return self._progress

    def start(self) -> None:
        """Make the report file (empty, unless the attempt wrote a report already: it may
        start after the attempt did) and start writing."""
        if self.file is not None:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.file, os.O_WRONLY | os.O_CREAT, 0o600)
                os.close(fd)
                seen = _signature(self.file)
                self._seen = seen if seen is not None and seen[1] == 0 else None
            except OSError:
                pass  # a full disk: the command's own write fails too, and says so
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def update(self, **changes: Any) -> None:
        """Change fields of the progress (`percent=40`, `tool=None`...)."""
        from agentjobs.clock import iso

        with self._lock:
            changed = dataclasses.replace(self._progress, **changes)
            if changed != self._progress:
                self._progress = dataclasses.replace(changed, updated_at=iso(self.now()) or "")
                self._changed = True

    def output(self) -> None:
        """The attempt's output grew just now."""
        from agentjobs.clock import iso

        moment = iso(self.now())
        with self._lock:
            if moment != self._progress.last_output_at:  # once a second at most (ISO seconds)
                self._progress = dataclasses.replace(self._progress, last_output_at=moment)
                self._changed = True

    def line(self, text: str) -> None:
        """An output line of a command: a `::progress` line sets the percent and message."""
        found = progress_line(text)
        if found is not None:
            self._report(*found)

    def _report(self, percent: float | None, message: str | None) -> None:
        changes: dict[str, Any] = {}
        if percent is not None:
            changes["percent"] = percent
        if message is not None:
            changes["message"] = message
        self.update(**changes)

    def stop(self) -> None:
        """Write the last change, end the thread, remove the report file."""
        self._stop.set()
        if self._thread is not None:
            # a write stuck on an unreachable database holds back the attempt's end this long
            # at most; what it writes after is not shown (the attempt is no longer running)
            self._thread.join(15.0)
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.unlink()

    def clear(self) -> None:
        """Remove the stored progress (the attempt is settled)."""
        if not self._tried:
            return  # never written: nothing to remove (and no store call for short attempts)
        progress = self.progress
        with contextlib.suppress(Exception):  # best effort, as every progress write
            self.store.clear_progress(progress.run_id, progress.attempt)

    def _run(self) -> None:
        # The first write comes after the first POLL: an attempt shorter than that (most
        # commands) costs the store nothing. At the end, a progress already shown is brought
        # up to date; one never shown is not written just to be removed.
        last = -math.inf
        try:
            while True:
                stopping = self._stop.wait(POLL)
                self._poll_file()
                due = self._tried if stopping else time.monotonic() - last >= INTERVAL
                if self._changed and due:
                    self._write()
                    last = time.monotonic()
                if stopping:
                    return
        finally:
            with contextlib.suppress(Exception):
                self.store.close_thread()  # this thread's database connection, if any

    def _write(self) -> None:
        self._tried = True
        with self._lock:
            progress, self._changed = self._progress, False
        try:
            self.store.put_progress(progress.run_id, progress.attempt, progress.to_dict())
            self.writes += 1
        except Exception:  # progress is best effort: a full disk, the database away or
            # anything else skips this update and never touches the attempt
            with self._lock:
                self._changed = True  # tried again in a second

    def _poll_file(self) -> None:
        if self.file is None:
            return
        seen = _signature(self.file)
        if seen is None or seen == self._seen:
            return
        self._seen = seen
        try:
            with open(self.file, "rb") as handle:
                handle.seek(max(0, seen[1] - 4096))
                text = handle.read(4096).decode("utf-8", errors="replace")
        except OSError:
            return
        lines = [line for line in text.splitlines() if line.strip()]
        found = report(self.redact(lines[-1])) if lines else None
        if found is not None:
            self._report(*found)


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
