"""Pages as HTML: the Jinja2 environment (autoescaped), its filters, and the view models that
turn query results into what a template draws (the timeline's geometry, a log's lines).

Imports no web server: the static report (`report.py`) renders the same templates.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2
from markupsafe import Markup

from agentjobs import query
from agentjobs.durations import format_duration
from agentjobs.review import diff_summary

# the timeline's zoom levels: the span a page shows, and the step between its axis labels
SPANS: dict[str, tuple[float, float]] = {
    "6h": (6 * 3600.0, 3600.0),
    "24h": (86400.0, 3 * 3600.0),
    "7d": (7 * 86400.0, 86400.0),
}
DEFAULT_SPAN = "24h"
WIDTH = 1000.0  # a lane's x axis runs from 0 to WIDTH (the SVG stretches it to the page)
MIN_WIDTH = 1.5  # a short attempt is drawn this wide, but never into the next bar
ROW = 20.0  # a lane's row height; bars are BAR high, waits WAIT high under them
BAR = 13.0
WAIT = 3.0

# env names whose values are never shown, beside those a job names in `secrets` (DESIGN.md
# invariant 8: secrets come from the environment; this catches one pasted into `env` anyway)
_SECRET_NAME = re.compile(r"(?i)(secret|token|passw|api[_-]?key|private|credential|auth)")


@functools.cache
def environment(static: bool = False) -> jinja2.Environment:
    """The templates, autoescaped everywhere (job output is untrusted: agents print anything).
    `static`: for the self-contained report (no links to a server, styles and script inline)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("agentjobs.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when,
        clock=clock_time,
        dur=duration,
        cost=cost,
        relative=relative,
        pretty_json=pretty_json,
        script_json=script_json,
        diff_summary=diff_summary,
    )
    env.globals.update(
        static=static, outcome_class=outcome_class, bar_title=bar_title, band_title=band_title
    )
    return env


def render(template: str, static: bool = False, **context: Any) -> str:
    return environment(static).get_template(template).render(**context)


# -- filters -----------------------------------------------------------------------------------


def when(moment: str | None) -> str:
    """A stored UTC time as local time with its zone (as the CLI prints times)."""
    if not moment:
        return "-"
    try:
        return datetime.fromisoformat(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return moment


def clock_time(moment: str | None) -> str:
    if not moment:
        return "-"
    return datetime.fromisoformat(moment).astimezone().strftime("%H:%M:%S")


def duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(float(seconds))


def cost(value: float | None, estimated: bool = False) -> str:
    if value is None:
        return "-"
    return f"{'~' if estimated else ''}${value:.4f}"


def relative(moment: str | None, now: str) -> str:
    """`in 5m`, `3h ago`, `due`."""
    if not moment:
        return "-"
    seconds = (datetime.fromisoformat(moment) - datetime.fromisoformat(now)).total_seconds()
    if abs(seconds) < 1:
        return "now"
    text = format_duration(abs(seconds))
    return f"in {text}" if seconds > 0 else f"{text} ago"


def pretty_json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True, default=str)


# outcomes, and the statuses of dead letters and review-inbox entries, by how they look
_GOOD = {"succeeded", "approved"}
_WAITING = {
    "running",
    "queued",
    "retrying",
    "replayed",
    "resolved",
    "skipped",
    "cancelled",
    "retried",
}
_REVIEW = {"awaiting_review", "pending"}  # succeeded; a person decides what lands (/inbox)
_WARN = {"no_change"}  # exited 0 having changed nothing (`expect.changes`): a failure, milder


def outcome_class(outcome: str | None) -> str:
    """The CSS class of an outcome: o-good, o-bad, o-wait, o-review, o-warn, plus o-NAME."""
    name = outcome or "none"
    kind = (
        "good"
        if name in _GOOD
        else "wait"
        if name in _WAITING
        else "review"
        if name in _REVIEW
        else "warn"
        if name in _WARN
        else "bad"
    )
    return f"o-{kind} o-{re.sub(r'[^a-z_]', '', name)}"


# -- the job spec, safe to show ----------------------------------------------------------------


def safe_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The applied spec with the value of every env variable that is named as a secret (or
    looks like one) replaced by `***`."""
    named = {str(n) for n in spec.get("secrets") or ()}
    out = dict(spec)
    env = spec.get("env")
    if isinstance(env, Mapping):
        out["env"] = {k: _masked(str(k), v, named) for k, v in env.items()}
    elif isinstance(env, list | tuple):  # stored as [name, value] pairs: shown as a mapping
        out["env"] = {
            str(pair[0]): _masked(str(pair[0]), pair[1], named)
            for pair in env
            if isinstance(pair, list | tuple) and len(pair) == 2
        }
    return out


def _masked(name: str, value: Any, named: set[str]) -> Any:
    return "***" if name in named or _SECRET_NAME.search(name) else value


# -- logs --------------------------------------------------------------------------------------


def log_lines(text: str) -> tuple[list[str], bool]:
    """A log's lines rendered as `logs --pretty` renders them, and whether any line was an
    agent event (otherwise the raw text is as good)."""
    from agentjobs.transcript import render as render_transcript

    events = any(line.lstrip().startswith("{") for line in text.splitlines()[:200])
    if not events:
        return text.splitlines(), False
    return render_transcript(text, color=False), True


# -- a run's diff (the review inbox) ----------------------------------------------------------

MAX_DIFF_LINES = 20000  # a diff view draws at most this many lines (`review show` has them all)


def diff_lines(diff: str, limit: int = MAX_DIFF_LINES) -> tuple[list[tuple[str, str]], int]:
    """`git diff` output as (kind, line) pairs for the diff view to colour, and how many lines
    past `limit` are left out. Kinds: `file` (a file's header lines), `hunk` (`@@`), `add`,
    `del`, `ctx`, `note` (`\\ No newline at end of file`). Inside a hunk a line is added or
    removed by its first character alone: a removed line that reads `-- x` is not a header."""
    lines = diff.split("\n")  # not splitlines(): a \f or \x1c in a file is not a line end
    if lines[-1] == "":
        lines.pop()
    out: list[tuple[str, str]] = []
    in_hunk = False
    for line in lines[:limit]:
        if line.startswith("diff --git "):
            in_hunk, kind = False, "file"
        elif line.startswith("@@"):
            in_hunk, kind = True, "hunk"
        elif not in_hunk:
            kind = "file"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        elif line.startswith("\\"):
            kind = "note"
        else:
            kind = "ctx"
        out.append((kind, line))
    return out, max(len(lines) - limit, 0)


# -- the timeline's geometry -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BarView:
    bar: query.Bar
    x: float
    width: float
    y: float


@dataclass(frozen=True, slots=True)
class BandView:
    band: query.Band
    x: float
    width: float
    y: float
    height: float


@dataclass(frozen=True, slots=True)
class LaneView:
    lane: query.Lane
    bars: tuple[BarView, ...]
    bands: tuple[BandView, ...]
    height: float


@dataclass(frozen=True, slots=True)
class TimelineView:
    timeline: query.Timeline
    span: str
    lanes: tuple[LaneView, ...]
    ticks: tuple[tuple[float, str], ...]
    now_x: float | None
    earlier: str  # the `end` of the page before
    later: str | None  # the `end` of the page after (None: this page ends now)
    attempts: int  # attempts drawn (merged bars count theirs)


def window(span: str, end: str | None, now: datetime) -> tuple[str, datetime, datetime]:
    """The span (one of SPANS, else the default) and the window it shows, ending at `end`
    (an ISO time; default and at most: now)."""
    if span not in SPANS:
        span = DEFAULT_SPAN
    finish = now
    if end:
        try:
            finish = datetime.fromisoformat(end.replace("Z", "+00:00"))
        except ValueError:
            finish = now
        if finish.tzinfo is None:
            finish = finish.replace(tzinfo=UTC)
        finish = min(finish, now)
    return span, finish - timedelta(seconds=SPANS[span][0]), finish


def timeline_view(tl: query.Timeline, span: str, now: datetime) -> TimelineView:
    """Where each bar and band goes on a lane's 0..WIDTH axis. A bar shorter than MIN_WIDTH
    is widened to it, but never into the next bar of its row: bars that do not overlap in
    time never overlap on the page."""
    start, end = datetime.fromisoformat(tl.start), datetime.fromisoformat(tl.end)
    origin = start.timestamp()
    scale = WIDTH / ((end - start).total_seconds() or 1.0)

    def x(moment: str) -> float:
        offset = (datetime.fromisoformat(moment).timestamp() - origin) * scale
        return WIDTH if offset > WIDTH else 0.0 if offset < 0 else offset

    lanes = []
    attempts = 0
    for lane in tl.lanes:
        count = len(lane.bars)
        starts = [x(b.start) for b in lane.bars]
        bars = []
        for i, bar in enumerate(lane.bars):
            left, right = starts[i], x(bar.end)
            if lane.shared:  # stacked rows: the next bar in this row
                following = next(
                    (starts[j] for j in range(i + 1, count) if lane.bars[j].row == bar.row),
                    WIDTH,
                )
            else:
                following = starts[i + 1] if i + 1 < count else WIDTH
            right = max(right, min(left + MIN_WIDTH, following))
            attempts += bar.attempts
            bars.append(BarView(bar, left, max(right - left, 0.0), bar.row * ROW + 2))
        base = lane.rows * ROW
        bands = []
        for band in lane.bands:
            left, right = x(band.start), x(band.end)
            if right <= left:
                continue
            if band.kind == "wait":
                bands.append(BandView(band, left, right - left, base + 1, WAIT))
            else:
                bands.append(BandView(band, left, right - left, 0.0, base + WAIT + 2))
        lanes.append(LaneView(lane, tuple(bars), tuple(bands), base + WAIT + 2))
    now_x = x(tl.now) if tl.start <= tl.now <= tl.end else None
    step = SPANS[span][1]
    total = (end - start).total_seconds()
    later = end + timedelta(seconds=total)
    return TimelineView(
        tl,
        span,
        tuple(lanes),
        tuple(_ticks(start, end, step, x)),
        now_x,
        (end - timedelta(seconds=total)).isoformat(timespec="seconds"),
        None
        if end >= now - timedelta(seconds=1)
        else min(later, now).isoformat(timespec="seconds"),
        attempts,
    )


def timeline_data(view: TimelineView) -> dict[str, Any]:
    """The bars and bands as compact JSON for the page's script to draw (thousands of bars
    cost the server a `json.dumps`, not a template each). Per lane, bars as [x, width, y,
    run id, attempt, outcome, job (an index into `jobs`), start, end (epoch seconds),
    seconds, cost, attempts] and bands as [x, width, y, height, kind, label, start, end];
    `classes` maps an outcome to its CSS classes."""
    classes: dict[str, str] = {}
    jobs: dict[str, int] = {}
    lanes = []
    for lv in view.lanes:
        bars = []
        for b in lv.bars:
            bar = b.bar
            if bar.outcome not in classes:
                classes[bar.outcome] = outcome_class(bar.outcome)
            job = jobs.setdefault(bar.job, len(jobs))
            bars.append(
                [
                    round(b.x, 2),
                    round(b.width, 2),
                    b.y,
                    bar.run_id,
                    bar.attempt,
                    bar.outcome,
                    job,
                    _epoch(bar.start),
                    _epoch(bar.end),
                    bar.duration_s,
                    bar.cost_usd,
                    bar.attempts,
                ]
            )
        bands = [
            [
                round(b.x, 2),
                round(b.width, 2),
                b.y,
                b.height,
                b.band.kind,
                b.band.label,
                _epoch(b.band.start),
                _epoch(b.band.end),
            ]
            for b in lv.bands
        ]
        lanes.append({"key": lv.lane.key, "bars": bars, "bands": bands})
    return {"lanes": lanes, "classes": classes, "jobs": list(jobs), "bar": BAR}


def script_json(value: Any) -> Markup:
    """`value` as compact JSON safe inside a <script> element (`<`, `>`, `&`, `'` escaped as
    JSON escapes, as Jinja's `tojson` does, without its indentation and key sorting)."""
    import json

    text = json.dumps(value, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        text = text.replace(char, escaped)
    return Markup(text)


def _epoch(moment: str) -> int:
    return int(datetime.fromisoformat(moment).timestamp())


def bar_title(bar: query.Bar) -> str:
    """A bar's tooltip (the static report's; the page's script writes the same)."""
    if bar.attempts > 1:
        return (
            f"{bar.attempts} attempts ({bar.job}), worst {bar.outcome}: "
            f"{when(bar.start)} to {when(bar.end)}"
        )
    spent = f", {cost(bar.cost_usd)}" if bar.cost_usd is not None else ""
    took = f" in {duration(bar.duration_s)}" if bar.duration_s is not None else ""
    return (
        f"{bar.job} run {bar.run_id} attempt {bar.attempt}: {bar.outcome}{took}{spent} "
        f"({when(bar.start)} to {when(bar.end)})"
    )


def band_title(band: query.Band) -> str:
    return f"{band.label}: {when(band.start)} to {when(band.end)}"


def _ticks(start: datetime, end: datetime, step: float, x: Any) -> Sequence[tuple[float, str]]:
    """Axis labels every `step` seconds, on local hour (or day) boundaries."""
    local = start.astimezone()
    if step >= 86400:
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
        fmt = "%a %d %b"
    else:
        hours = int(step // 3600)
        first = local.replace(minute=0, second=0, microsecond=0)
        first = first.replace(hour=first.hour - first.hour % hours)
        fmt = "%H:%M"
    out = []
    moment = first
    while moment <= end:
        if moment >= start:
            out.append((x(moment.isoformat()), moment.strftime(fmt)))
        moment = (moment + timedelta(seconds=step)).astimezone()
    return out
