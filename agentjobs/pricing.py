"""What an agent attempt cost: the CLI's own figure where it reports one (claude's
`total_cost_usd`), else tokens times a price table (`estimated`).

Prices are USD per million tokens: `input` (uncached prompt tokens), `output`, `cached` (prompt
tokens read from the provider's cache). The defaults below are the providers' published list
prices for the models each CLI uses by default; `pricing:` in agentjobs.yaml overrides or adds
entries. A model is priced by the longest table entry it starts with (`gpt-5-codex-mini` by
`gpt-5-codex-mini`, `gpt-5.1-codex` by `gpt-5.1-codex`, `gemini-2.5-pro-preview` by
`gemini-2.5-pro`); a job without `agent.model` is priced as its CLI's default model
(`DEFAULT_MODELS`). A model in no entry has no cost (recorded as unknown, never as 0).

Usage comes from the stream each CLI prints: codex's `turn.completed.usage` (input includes
cached), gemini's `result.stats` (input includes cached), claude's `result.usage` (input
excludes cache reads). `Meter` adds it up event by event, so a running attempt's spend is known
while it runs (the supervisor stops an attempt that passes its cap, `status` shows it). Until
claude's result arrives, its spend is estimated from the usage of each of its messages
(`assistant` events, counted once per message id); the result's totals then replace it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentjobs.progress import Activity


@dataclass(frozen=True, slots=True)
class Price:
    input: float
    output: float
    cached: float


# USD per million tokens (list prices; override in agentjobs.yaml `pricing:`)
DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI (codex)
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-codex": Price(1.25, 10.0, 0.125),
    "gpt-5.1": Price(1.25, 10.0, 0.125),
    "gpt-5.1-codex": Price(1.25, 10.0, 0.125),
    "gpt-5.1-codex-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "gpt-4.1": Price(2.0, 8.0, 0.50),
    "o3": Price(2.0, 8.0, 0.50),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "codex-mini-latest": Price(1.50, 6.0, 0.375),
    # Google (gemini), prompts up to 200k tokens
    "gemini-2.5-pro": Price(1.25, 10.0, 0.125),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, 0.01),
    "gemini-3-pro": Price(2.0, 12.0, 0.20),
    # Anthropic (claude reports its own cost; these price its usage when it does not)
    "claude-opus-4": Price(15.0, 75.0, 1.50),
    "claude-opus-4-5": Price(5.0, 25.0, 0.50),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08),
}
# the model a CLI uses when the job names none
DEFAULT_MODELS = {"codex": "gpt-5-codex", "gemini": "gemini-2.5-pro", "claude": "claude-sonnet-4"}


def price_table(configured: Mapping[str, Any] | None) -> dict[str, Price]:
    """The defaults with agentjobs.yaml's `pricing:` entries over them."""
    table = dict(DEFAULT_PRICES)
    for model, entry in (configured or {}).items():
        base = table.get(model, Price(0.0, 0.0, 0.0))
        table[model] = Price(
            float(entry.get("input", base.input)),
            float(entry.get("output", base.output)),
            float(entry.get("cached", entry.get("input", base.cached))),
        )
    return table


def price_of(model: str, table: Mapping[str, Price]) -> Price | None:
    """The entry for `model`: exact, else the longest entry it starts with."""
    if model in table:
        return table[model]
    best = max((name for name in table if model.startswith(name)), key=len, default=None)
    return None if best is None else table[best]


@dataclass(slots=True)
class Meter:
    """An attempt's usage, added up from its stream events as they come."""

    kind: str
    model: str | None = None  # from the job, else from the stream's init event
    input: int = 0  # uncached prompt tokens
    cached: int = 0
    output: int = 0
    reported: float | None = None  # the CLI's own cost figure (claude)
    turns: int | None = None
    seen: bool = False  # any usage at all
    # claude before its result: each message's (input, cached, output) by message id (one
    # message arrives as several events with the same usage)
    messages: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    final: bool = False  # claude's result came: its totals are the usage
    # gemini's turns: its model replies between tool results, as its live progress counts them
    # (its stream has no turn count, issue 15)
    replies: Activity | None = None

    def feed(self, event: Mapping[str, Any]) -> bool:
        """Take one stream event; True when it changed the usage."""
        kind = event.get("type")
        if kind in ("init", "system") and self.model is None:
            model = event.get("model")
            # gemini's init says `auto` (0.61): its router picks the models, so it is priced as
            # the default model
            if isinstance(model, str) and model and model != "auto":
                self.model = model
            return False
        if self.kind == "codex" and kind == "turn.completed":
            self.turns = (self.turns or 0) + 1
            return self._add(event.get("usage"), cached_in_input=True)
        if self.kind == "gemini" and kind in ("message", "tool_use", "tool_result"):
            if self.replies is None:
                from agentjobs.progress import Activity

                self.replies = Activity("gemini")
            self.replies.feed(event)
            self.turns = self.replies.turns
            return False
        if self.kind == "gemini" and kind == "result":
            return self._add(event.get("stats"), cached_in_input=True)
        if self.kind == "claude" and kind == "assistant" and not self.final:
            return self._message(event.get("message"))
        if self.kind == "claude" and kind == "result":
            if isinstance(event.get("num_turns"), int):
                self.turns = event["num_turns"]
            cost = event.get("total_cost_usd")
            if isinstance(cost, int | float):
                self.reported = float(cost)
                self.seen = True
            self.final = True
            self.input = self.cached = self.output = 0  # the result's usage is the total
            return self._add(event.get("usage"), cached_in_input=False) or cost is not None
        return False

    def _message(self, message: Any) -> bool:
        """A claude message's usage, in place of what the same message said before."""
        if not isinstance(message, Mapping):
            return False
        counted = _tokens(message.get("usage"), cached_in_input=False)
        if counted is None:
            return False
        ident = message.get("id")
        key = ident if isinstance(ident, str) else f"#{len(self.messages)}"
        before = self.messages.get(key, (0, 0, 0))
        if counted == before:
            return False
        self.messages[key] = counted
        self.input += counted[0] - before[0]
        self.cached += counted[1] - before[1]
        self.output += counted[2] - before[2]
        self.seen = True
        return True

    def feed_line(self, line: str) -> bool:
        event = stream_event(line)
        return event is not None and self.feed(event)

    def _add(self, usage: Any, *, cached_in_input: bool) -> bool:
        counted = _tokens(usage, cached_in_input=cached_in_input)
        if counted is None:
            return False
        self.input += counted[0]
        self.cached += counted[1]
        self.output += counted[2]
        self.seen = True
        return True

    def cost(self, table: Mapping[str, Price]) -> tuple[float, bool] | None:
        """(USD, estimated) so far: the CLI's own figure, else tokens times the model's price;
        None when there is no usage or no price for the model."""
        if self.reported is not None:
            return round(self.reported, 6), False
        if not self.seen:
            return None
        price = price_of(self.model or DEFAULT_MODELS.get(self.kind, ""), table)
        if price is None:
            return None
        usd = self.input * price.input + self.cached * price.cached + self.output * price.output
        return round(usd / 1e6, 6), True

    def facts(self, table: Mapping[str, Price]) -> dict[str, Any]:
        """What the run record keeps under `agent`: model, tokens, turns, cost."""
        facts: dict[str, Any] = {"kind": self.kind}
        facts["model"] = self.model or DEFAULT_MODELS.get(self.kind)
        if self.input or self.cached or self.output:
            facts["tokens"] = {"input": self.input, "cached": self.cached, "output": self.output}
        if self.turns is not None:
            facts["turns"] = self.turns
        cost = self.cost(table)
        if cost is not None:
            facts["cost_usd"], facts["cost_estimated"] = cost
        return facts


def stream_event(line: str) -> dict[str, Any] | None:
    """The JSON object on one line of an agent's output; None for any other line."""
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _tokens(usage: Any, *, cached_in_input: bool) -> tuple[int, int, int] | None:
    """(uncached input, cached input, output) tokens of one usage object; None without any."""
    if not isinstance(usage, Mapping):
        return None
    given = _count(usage.get("input_tokens"))
    out = _count(usage.get("output_tokens"))
    cached = _count(
        usage.get("cached_input_tokens")
        or usage.get("cached")
        or usage.get("cache_read_input_tokens")
    )
    created = _count(usage.get("cache_creation_input_tokens"))
    if given is None and out is None:
        return None
    uncached = (given or 0) - (cached or 0) if cached_in_input else (given or 0)
    return max(0, uncached) + (created or 0), cached or 0, out or 0


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def meter_output(kind: str, model: str | None, output: str) -> Meter:
    """A meter fed every line of `output`."""
    meter = Meter(kind, model)
    for line in output.splitlines():
        meter.feed_line(line)
    return meter
