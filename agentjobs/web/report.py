"""`agentjobs report --html FILE`: the overview, the timeline and the failures as one
self-contained HTML file (styles and script inline, no links to a server) to commit or mail."""

from __future__ import annotations

import contextlib
import os
import time
from datetime import datetime
from pathlib import Path

from agentjobs import query
from agentjobs.store import Store
from agentjobs.web import render

STATIC = Path(__file__).with_name("static")


def report_html(store: Store, now: datetime, span: str = render.DEFAULT_SPAN) -> str:
    """The report as one HTML document."""
    cache = query.DayCache()
    span, start, end = render.window(span, None, now)
    view = render.timeline_view(query.timeline(store, start, end, now, cache=cache), span, now)
    return render.render(
        "report.html",
        static=True,
        overview=query.overview(store, now, cache=cache),
        view=view,
        groups=query.dead_letter_groups(store),
        where=store.describe(),
        zone=time.strftime("%Z"),
        read_only=True,
        csrf="",
        path="",
        inline_css=(STATIC / "app.css").read_text(),
        inline_js=(STATIC / "app.js").read_text(),
    )


def write_report(store: Store, target: Path, now: datetime, span: str) -> int:
    """Write the report to `target` atomically (a temp file beside it, then a rename);
    returns its size in bytes."""
    data = report_html(store, now, span).encode()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return len(data)
