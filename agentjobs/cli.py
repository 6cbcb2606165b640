"""The command line: thin click verbs that call one core function each and render the result.

Exit codes (DESIGN.md): 0 ok, 1 a job or check failed, 2 usage or invalid input, 3 `plan` found
changes, 130 Ctrl-C; an unexpected exception is a bug: a crash report goes into the state
directory and the exit code is 70 (EX_SOFTWARE), so it never looks like a plan with changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agentjobs import __version__
from agentjobs.errors import (
    ENVIRONMENT_ERRNOS,
    InvalidJobError,
    Problem,
    StateWriteError,
    UserError,
    environment_error,
)

if TYPE_CHECKING:
    import threading

    from agentjobs.cancel import Cancellation, CancelSwitch
    from agentjobs.clock import Clock
    from agentjobs.engine import Engine
    from agentjobs.reconcile import Plan
    from agentjobs.runrecords import AttemptFinished
    from agentjobs.settle import AttemptResult
    from agentjobs.store import AppliedJob, Review, Runtime, Store
    from agentjobs.transcript import Transcript
    from agentjobs.validate import LoadResult

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CHANGES, EXIT_BUG = 0, 1, 2, 3, 70
# what `history --outcome` takes (retry.Outcome's values; listed here to keep `retry` off the
# start-up path of every verb)
OUTCOMES = (
    "succeeded",
    "failed",
    "timeout",
    "silence",
    "verify_failed",
    "lost",
    "interrupted",
    "skipped",
    "rate_limited",
    "budget",
    "cancelled",
    "awaiting_review",
    "no_change",
)


@dataclass(frozen=True, slots=True)
class Context:
    jobs_dir: Path
    state_dir: str
    output: str

    def store(self) -> Store:
        from agentjobs.store import open_store

        return open_store(self.state_dir)

    @property
    def json(self) -> bool:
        return self.output == "json"


class Exit(Exception):
    """Leave with this code after the command has rendered its result."""

    def __init__(self, code: int) -> None:
        self.code = code


def _now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"--now {value}: not an ISO-8601 time (e.g. 2026-11-24T02:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None) -> str:
    """Aligned columns; with `width`, the widest columns are cut (ending in `…`) until a line
    fits. Cells may hold colour codes: widths count what shows."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, _shown(c)) for w, c in zip(widths, row, strict=True)]
    if width is not None:
        while sum(widths) + 2 * (len(widths) - 1) > width and max(widths) > 12:
            widest = widths.index(max(widths))
            widths[widest] -= 1

    def line(cells: Sequence[str]) -> str:
        return "  ".join(_fit(c, w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _shown(cell: str) -> int:
    return len(click.unstyle(cell)) if "\x1b" in cell else len(cell)


def _fit(cell: str, width: int) -> str:
    """`cell` padded to `width`, or cut to it (a coloured cell loses its colour when cut)."""
    shown = _shown(cell)
    if shown <= width:
        return cell + " " * (width - shown)
    plain = click.unstyle(cell)
    return plain[: width - 1] + "…"


def _render_problems(problems: Sequence[Problem]) -> None:
    for problem in problems:
        if problem.severity == "warning":
            where = f"{problem.file}:{problem.line}:{problem.column}"
            path = f" {problem.json_path}:" if problem.json_path else ""
            click.echo(f"{where}:{path} warning: {problem.message}", err=True)
        else:
            click.echo(problem.render())


def _load(ctx: Context) -> LoadResult:
    from agentjobs.validate import load_jobs_dir

    if not ctx.jobs_dir.is_dir():
        raise UserError(
            f"jobs directory {ctx.jobs_dir} not found; pass --jobs-dir or set AGENTJOBS_JOBS_DIR"
        )
    result = load_jobs_dir(ctx.jobs_dir)
    if not result.ok:
        raise InvalidJobError(list(result.problems))
    return result


# -- the command group -----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="agentjobs")
@click.option(
    "--jobs-dir",
    envvar="AGENTJOBS_JOBS_DIR",
    default="jobs.d",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Directory of job files.",
)
@click.option(
    "--state-dir",
    default=None,
    help="State directory, or a postgresql:// URL shared by several hosts "
    "[default: $AGENTJOBS_DATABASE_URL, else $AGENTJOBS_STATE_DIR, else .agentjobs].",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.pass_context
def cli(click_ctx: click.Context, jobs_dir: Path, state_dir: str | None, output: str) -> None:
    """Run unattended AI coding agent jobs declared in files."""
    click_ctx.obj = Context(jobs_dir=jobs_dir, state_dir=_state_location(state_dir), output=output)


def _state_location(flag: str | None) -> str:
    """--state-dir, else AGENTJOBS_DATABASE_URL, else AGENTJOBS_STATE_DIR, else .agentjobs."""
    return (
        flag
        or os.environ.get("AGENTJOBS_DATABASE_URL")
        or os.environ.get("AGENTJOBS_STATE_DIR")
        or ".agentjobs"
    )


def _host_options(command: Callable[..., None]) -> Callable[..., None]:
    """--host and --labels: who this runner is, for `runs_on` and the shared backend."""
    command = click.option(
        "--labels",
        envvar="AGENTJOBS_LABELS",
        default="",
        help="This host's labels, comma-separated (jobs with `runs_on` need all of theirs).",
    )(command)
    return click.option(
        "--host",
        "host_id",
        envvar="AGENTJOBS_HOST",
        default=None,
        help="This runner's id [default: the host name].",
    )(command)


pass_ctx = click.make_pass_decorator(Context)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_ctx
def validate(ctx: Context, paths: tuple[Path, ...]) -> None:
    """Check job files (default: the jobs directory) and report every problem."""
    from agentjobs.validate import load, summary

    targets = list(paths) or [ctx.jobs_dir]
    if not paths and not ctx.jobs_dir.is_dir():
        raise UserError(f"jobs directory {ctx.jobs_dir} not found; pass files or --jobs-dir")
    result = load(targets)
    if ctx.json:
        _emit_json([p.as_dict() for p in result.problems])
    else:
        _render_problems(result.problems)
        click.echo(summary(result.problems, len(result.jobs), result.files), err=True)
    if result.errors:
        raise Exit(EXIT_INVALID)


def _render_plan(plan: Plan, verb: str) -> None:
    from agentjobs.reconcile import Action

    marks = {
        Action.CREATE: "+",
        Action.UPDATE: "~",
        Action.DELETE: "-",
        Action.ORPHAN: "!",
        Action.UNCHANGED: " ",
    }
    for change in plan.changes:
        if change.action == Action.UNCHANGED:
            continue
        where = f"  ({change.source})" if change.source else ""
        click.echo(f"{marks[change.action]} {change.action.value}: {change.name}{where}")
        for field in change.fields:
            click.echo(f"    {field.path}: {json.dumps(field.old)} -> {json.dumps(field.new)}")
    summary = (
        f"{plan.count(Action.CREATE)} to create, {plan.count(Action.UPDATE)} to update, "
        f"{plan.count(Action.DELETE)} to delete, {plan.count(Action.UNCHANGED)} unchanged"
    )
    orphans = plan.count(Action.ORPHAN)
    if orphans:
        summary += f", {orphans} whose file is gone (kept; use --prune to delete)"
    click.echo(f"{verb}: {summary}.")


def _plan_json(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "action": c.action.value,
            "name": c.name,
            "source": c.source,
            "changes": [{"path": f.path, "old": f.old, "new": f.new} for f in c.fields],
        }
        for c in plan.changes
    ]


@cli.command()
@click.option("--prune", is_flag=True, help="Count jobs whose file is gone as deletions.")
@pass_ctx
def plan(ctx: Context, prune: bool) -> None:
    """Show what apply would change. Exit 0: nothing; 3: changes; 2: invalid files."""
    from agentjobs.reconcile import compute_plan

    result = _load(ctx)
    store = ctx.store()
    the_plan = compute_plan(result.jobs, store.applied(), prune, result.config, store.config())
    if ctx.json:
        _emit_json(_plan_json(the_plan))
    else:
        _render_problems(result.warnings)
        _render_plan(the_plan, "Plan")
    if the_plan.pending:
        raise Exit(EXIT_CHANGES)


def _lock_timeout(flag: float | None = None) -> float:
    """Seconds to wait for the state lock: `flag` (--lock-timeout), else AGENTJOBS_LOCK_TIMEOUT
    (unset or empty: the engine's default, 30). Anything but a number of seconds, 0 or more, is
    a `UserError` naming where it came from (one line, exit 2)."""
    import math

    from agentjobs.engine import DEFAULT_LOCK_TIMEOUT

    if flag is not None:
        value, source = flag, f"--lock-timeout {flag:g}"
    else:
        text = os.environ.get("AGENTJOBS_LOCK_TIMEOUT", "")
        if not text:  # as click reads an empty variable: not set
            return DEFAULT_LOCK_TIMEOUT
        source = f"AGENTJOBS_LOCK_TIMEOUT={text!r}"
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{source}: the lock timeout is a number of seconds, 0 or more (30, say)")
    return value


_lock_timeout_option = click.option(
    "--lock-timeout",
    type=float,
    default=None,
    callback=lambda _ctx, _param, flag: _lock_timeout(flag),
    help="Seconds to wait for another apply or tick [default: AGENTJOBS_LOCK_TIMEOUT, else 30].",
)


@cli.command()
@click.option("--prune", is_flag=True, help="Delete applied jobs whose file is gone.")
@click.option("--dry-run", is_flag=True, help="Show the plan, change nothing.")
@_lock_timeout_option
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def apply(
    ctx: Context, prune: bool, dry_run: bool, lock_timeout: float, now_text: str | None
) -> None:
    """Validate every job file, then write them into the state directory."""
    from agentjobs.gitinfo import head_commit
    from agentjobs.reconcile import apply_plan

    result = _load(ctx)
    the_plan = apply_plan(
        ctx.store(),
        result.jobs,
        result.config,
        now=_now(now_text),
        prune=prune,
        dry_run=dry_run,
        lock_timeout=lock_timeout,
        git_commit=head_commit(ctx.jobs_dir),
    )
    if ctx.json:
        _emit_json(_plan_json(the_plan))
    else:
        _render_problems(result.warnings)
        _render_plan(the_plan, "Dry run" if dry_run else "Applied")


def _when(moment: str | None) -> str:
    if not moment:
        return "-"
    return datetime.fromisoformat(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _left(moment: str | None, now: datetime) -> str:
    from agentjobs.durations import format_duration

    if not moment:
        return "-"
    seconds = (datetime.fromisoformat(moment) - now).total_seconds()
    if seconds <= 0:
        return "due"
    return format_duration(seconds)


_RESULT_COLOURS = {
    "succeeded": "green",
    "skipped": "yellow",
    "rate_limited": "yellow",
    "awaiting_review": "yellow",  # done; a person decides what lands
    "cancelled": "yellow",
}


def _status_row(
    j: Any, r: dict[str, Any], now: datetime, paint: Callable[[str, str], str]
) -> list[str]:
    """One job's row of the `status` table."""
    flags = [f for f, on in (("disabled", not r["enabled"]), ("paused", r["paused"])) if on]
    result = r["result"] or "-"
    if j.dead_letters:
        result += f", {j.dead_letters} dead-lettered"
    if j.reviews and (j.reviews, r["result"]) != (1, "awaiting_review"):
        result += f", {j.reviews} awaiting review"
    schedule = r["schedule"]
    if schedule == "manual" and j.needs:
        schedule = f"after {', '.join(j.needs)} (needs)"
    return [
        r["job"],
        schedule + "".join(f" ({f})" for f in flags),
        _when(r["next"]),
        _left(r["next"], now),
        _when(r["last"]),
        paint(result, _RESULT_COLOURS.get(str(r["result"]), "red") if r["result"] else ""),
        _now_column(j, r, now, paint),
        str(r["lock"]),
    ]


def _now_column(j: Any, r: dict[str, Any], now: datetime, paint: Callable[[str, str], str]) -> str:
    """What the job is doing now: running (attempt, for how long, its progress), held, queued
    and why (the first queued item's reason), or waiting on hosts; `-` when idle."""
    from agentjobs.durations import format_duration

    if j.running:
        w = j.running[0]
        since = (now - datetime.fromisoformat(w.started_at)).total_seconds() if w.started_at else 0
        text = f"running attempt {w.attempt} for {format_duration(max(0.0, since))}"
        return paint(text + (f" ({w.progress_text})" if w.progress_text else ""), "cyan")
    if r["held"]:
        key, until = r["held"]
        return paint(f"held: {key} usage limit until {_when(until)}", "yellow")
    if r["limit_hold"]:
        return paint(r["limit_hold"], "yellow")
    if r["skipped_by"]:
        return "waiting: " + "; ".join(n["reason"] for n in r["skipped_by"])
    if j.queued:
        return f"queued {j.queued}: {j.waiting}"
    return "-"


def _painter() -> Callable[[str, str], str]:
    """Colours only on a terminal, never with NO_COLOR set (no-color.org)."""
    if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
        return lambda text, _colour: text
    return lambda text, colour: click.style(text, fg=colour) if colour else text


def _terminal_width() -> int | None:
    """The width a table must fit: COLUMNS, else the terminal's; None when writing to a pipe
    or a file (scripts get whole lines)."""
    import shutil

    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _held(job: AppliedJob, holds: dict[str, str], now: datetime) -> tuple[str, str] | None:
    """(limit key, until) when the job's agent shares a usage limit that is in force."""
    from agentjobs.clock import iso

    key = job.limit_key
    if key is None:
        return None
    until = holds.get(key)
    return (key, until) if until and until > (iso(now) or "") else None


@cli.command()
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def status(ctx: Context, now_text: str | None) -> None:
    """A table of applied jobs: schedule, next run, last run and result; today's spend."""
    from agentjobs import query

    store = ctx.store()
    now = _now(now_text)
    applied = store.applied()
    runtime = store.runtime()
    hosts = store.hosts()
    spend = _spend_today(store, applied, runtime, now)
    found = query.jobs(store, now)
    rows: list[dict[str, Any]] = [
        {
            "job": j.job,
            "schedule": j.schedule,
            "enabled": j.enabled,
            "paused": j.paused,
            "running": bool(j.running),
            "queued": j.queued,
            "next": j.next,  # the scheduled slot, or sooner a queued run (a retry, a manual run)
            "last": j.last,
            "result": j.result,
            "lock": applied[j.job].spec.get("lock"),
            "held": _held(applied[j.job], runtime.holds, now),
            # why its first queued item waits, and the usage limit, budget or rate holding its
            # items: the claim's own reasons (query.py)
            "waiting": j.waiting,
            "limit_hold": j.held,
            "spend_today": spend["spend"].get(f"job:{j.job}") if spend else None,
            "skipped_by": [{"host": host, "reason": reason} for host, reason in j.skipped_by],
            "attempts_running": [
                {
                    "run_id": w.run_id,
                    "attempt": w.attempt,
                    "started_at": w.started_at,
                    "host": w.host,
                    "progress": query.as_json(w.progress),
                }
                for w in j.running
            ],
            "dead_letters": j.dead_letters,
            "reviews": j.reviews,
            "needs": list(j.needs),
        }
        for j in found
    ]
    if ctx.json:
        _emit_json(rows)
        return
    if not rows:
        click.echo(f"no jobs applied in {store.describe()}; run `agentjobs apply`")
        return
    paint = _painter()
    table = [_status_row(j, r, now, paint) for j, r in zip(found, rows, strict=True)]
    headers = ["JOB", "SCHEDULE", "NEXT", "LEFT", "LAST", "RESULT", "NOW", "LOCK"]
    click.echo(_table(headers, table, width=_terminal_width()))
    if hosts:  # the runner hosts that ticked against this database, and when they last did
        seen = [
            f"{h['host']} ({','.join(h['labels']) + '; ' if h['labels'] else ''}"
            f"active {_ago(h['seen_at'], now)})"
            for h in hosts
        ]
        click.echo("hosts: " + ", ".join(seen))
    if spend is not None:
        _render_spend(spend)
    from agentjobs.notify import pending_summary

    for line in pending_summary(store):  # nothing is dropped silently (notify.py)
        click.echo(line)


def _spend_today(
    store: Store, applied: dict[str, AppliedJob], runtime: Runtime, now: datetime
) -> dict[str, Any] | None:
    """Today's spend against the caps (`costs.ledger_view`); without limits configured and
    with an empty ledger (the usual `status`) only the stored config and specs are looked at."""
    from agentjobs import costs

    if not costs.limits_configured(store.config(), applied) and not runtime.ledger:
        return None
    return costs.ledger_view(store, now)


def _render_spend(ledger: dict[str, Any]) -> None:
    """`costs.ledger_view` as `spend today (DAY, ZONE):` and a line per scope (total, accounts,
    jobs), named as budget holds name them: `job nightly  $4.80 of $5.00`."""
    click.echo(f"spend today ({ledger['day']}, {ledger['timezone']}):")
    rank = {"total": 0, "account": 1, "job": 2}
    scopes = sorted(
        set(ledger["spend"]) | set(ledger["caps"]), key=lambda s: (rank.get(s.split(":")[0], 3), s)
    )
    names = {scope: scope.replace(":", " ", 1) for scope in scopes}
    width = max(map(len, names.values()))
    for scope in scopes:
        cap = ledger["caps"].get(scope)
        of = "" if cap is None else f" of ${cap:.2f}"
        click.echo(f"  {names[scope].ljust(width)}  ${ledger['spend'].get(scope, 0.0):.2f}{of}")


def _ago(moment: str, now: datetime) -> str:
    from agentjobs.durations import format_duration

    seconds = (now - datetime.fromisoformat(moment)).total_seconds()
    return f"{format_duration(seconds)} ago" if seconds >= 1 else "just now"


# -- the engine ------------------------------------------------------------------------------


def _engine(
    ctx: Context,
    now_text: str | None = None,
    max_concurrent: int | None = None,
    stream: bool = False,
    host: str | None = None,
    labels: str = "",
) -> Engine:
    from agentjobs.engine import Engine, default_host

    def say(line: str) -> None:
        click.echo(f"agentjobs: {line}", err=True)

    def show(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    return Engine(
        ctx.store(),
        clock=_clock(now_text),
        lock_timeout=_lock_timeout(),
        max_concurrent=max_concurrent,
        say=say,
        on_output=show if stream else None,
        host=host or default_host(),
        labels=frozenset(part.strip() for part in labels.split(",") if part.strip()),
    )


def _clock(now_text: str | None) -> Clock:
    """Real time; or, with `--now`, time from then on (at the real rate, or for tests
    AGENTJOBS_CLOCK_RATE times faster: the same for every process that is given it)."""
    from agentjobs.clock import Clock

    if not now_text:
        return Clock()
    return Clock(_now(now_text), rate=float(os.environ.get("AGENTJOBS_CLOCK_RATE", "1")))


class _Shutdown:
    """While open, SIGTERM/SIGINT set `stop` (an engine's stop event: no new claims, running
    groups are stopped (TERM, grace, KILL) and recorded `interrupted`); `code` is then 143 or
    130. With `ignore_hangup`, SIGHUP does nothing meanwhile (the daemon). The old handlers come
    back on exit."""

    def __init__(self, stop: threading.Event | None = None, ignore_hangup: bool = False) -> None:
        import threading

        self.stop = threading.Event() if stop is None else stop
        self.signal: int | None = None
        self._ignore_hangup = ignore_hangup

    def __enter__(self) -> _Shutdown:
        import signal

        def handler(number: int, _frame: object) -> None:
            self.signal = number
            self.stop.set()

        self._old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        if self._ignore_hangup:
            self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _n, _f: None)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for number, old in self._old.items():
            signal.signal(number, old)

    @property
    def code(self) -> int | None:
        import signal

        if self.signal is None:
            return None
        return 130 if self.signal == signal.SIGINT else 143


def _attempt_json(result: AttemptResult) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(result)


def _warn_if_ahead(moment: datetime) -> None:
    """`tick --now` in the future stays usable (tests, replays), but what it writes carries
    that time: say so (issue 13). A minute of slack for clocks that are merely close."""
    if (moment - datetime.now(UTC)).total_seconds() > 60:
        click.echo(
            f"agentjobs: warning: --now {moment.isoformat()} is ahead of this machine's clock; "
            "the records this tick writes and the next runs it schedules carry that time",
            err=True,
        )


@cli.command()
@click.option("--now", "now_text", default=None, help="Evaluate schedules at this ISO time.")
@click.option(
    "--max-concurrent",
    type=click.IntRange(1, 1000),
    default=None,
    help="Override the global config's max_concurrent.",
)
@_host_options
@pass_ctx
def tick(
    ctx: Context,
    now_text: str | None,
    max_concurrent: int | None,
    host_id: str | None,
    labels: str,
) -> None:
    """One scheduling pass: recover, enqueue what is due, run what is free, exit."""
    if now_text:  # as `_clock` reads it: an empty --now is the real clock
        _warn_if_ahead(_now(now_text))
    engine = _engine(ctx, now_text, max_concurrent, host=host_id, labels=labels)
    with _Shutdown(engine.stop) as shutdown:
        result = engine.tick()
    if ctx.json:
        _emit_json(
            {
                "attempts": [_attempt_json(a) for a in result.attempts],
                "enqueued": result.enqueued,
                "skipped": result.skipped,
                "recovered": result.recovered,
                "messages": list(result.messages),
            }
        )
    else:
        for attempt in result.attempts:
            detail = f" ({attempt.error})" if attempt.error else ""
            click.echo(
                f"{attempt.job}: attempt {attempt.attempt} {attempt.outcome}{detail} "
                f"in {attempt.duration_s:.1f}s [run {attempt.run_id}]"
            )
    if shutdown.code is not None:
        raise Exit(shutdown.code)
    if not result.ok:
        raise Exit(EXIT_FAILED)


class _OnInterrupt:
    """`run`'s Ctrl-C, inside its `_Shutdown` (SIGTERM stays the shutdown's): `retry` stops
    the attempt as a shutdown does (recorded `interrupted`, retried); `cancel` arms the
    engine's cancel switch (recorded `cancelled`, never retried); `ask` asks on the terminal,
    once, from a thread (the output keeps streaming meanwhile; `before_asking` quiets what
    would draw over the question). A Ctrl-C after the first does not wait for an answer: it
    stops the attempt. The exit code stays 130."""

    def __init__(
        self,
        shutdown: _Shutdown,
        choice: str,
        switch: CancelSwitch | None,
        before_asking: Callable[[], None] = lambda: None,
    ) -> None:
        self.shutdown, self.choice, self.switch = shutdown, choice, switch
        self.before_asking = before_asking
        self._first = True

    def __enter__(self) -> _OnInterrupt:
        import signal

        self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        signal.signal(signal.SIGINT, self._old)

    def _handler(self, number: int, _frame: object) -> None:
        import threading

        self.shutdown.signal = number
        first, self._first = self._first, False
        if not first or self.switch is None:
            self.shutdown.stop.set()
        elif self.choice == "cancel":
            self.switch.event.set()
        else:
            threading.Thread(target=self._ask, args=(self.switch,), daemon=True).start()

    def _ask(self, switch: CancelSwitch) -> None:
        self.before_asking()
        click.echo(
            "\nagentjobs: cancel the run, or leave it to be retried? [c/R] ", err=True, nl=False
        )
        try:  # the descriptor, not sys.stdin: a thread blocked holding its buffer's lock
            # would abort the interpreter's exit should the run end first
            answer = os.read(0, 256).decode(errors="replace")
        except OSError:
            answer = ""
        if answer.strip().lower() in ("c", "cancel"):
            switch.event.set()
        else:
            self.shutdown.stop.set()


def _user() -> str:
    """Who is cancelling, for the record: $USER, else the login name."""
    from agentjobs.review import login_name

    return login_name()


@cli.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait for the lock key instead of leaving it queued.")
@click.option(
    "--pretty", is_flag=True, help="Render an agent's JSON events as readable lines as they come."
)
@click.option(
    "--on-interrupt",
    type=click.Choice(["cancel", "retry"]),
    default=None,
    help="What Ctrl-C does: cancel the run (never retried), or stop the attempt and leave the "
    "run to be retried [default: ask on a terminal, else retry].",
)
@_host_options
@pass_ctx
def run(
    ctx: Context,
    job: str,
    wait: bool,
    pretty: bool,
    on_interrupt: str | None,
    host_id: str | None,
    labels: str,
) -> None:
    """Run JOB now, in the foreground, streaming its output."""
    import contextlib

    from agentjobs.cancel import Cancellation, CancelSwitch
    from agentjobs.liveview import LiveView

    engine = _engine(ctx, stream=not ctx.json, host=host_id, labels=labels)
    view = LiveView(pretty=pretty) if engine.on_output is not None else None
    if view is not None:
        engine.on_output = view.write
    terminal = sys.stdin is not None and sys.stdin.isatty()
    choice = on_interrupt or ("ask" if terminal else "retry")
    if choice != "retry":
        engine.cancel = CancelSwitch(_user(), "Ctrl-C on agentjobs run")
    with (
        _Shutdown(engine.stop) as shutdown,
        _OnInterrupt(shutdown, choice, engine.cancel, view.hush if view else lambda: None),
        view or contextlib.nullcontext(),
    ):
        item, outcome = engine.run_now(job, wait=wait)
    if isinstance(outcome, Cancellation):  # cancelled while it waited for its lock key
        if ctx.json:
            _emit_json({"run_id": item.run_id, "started": False, "cancelled": outcome.to_dict()})
        else:
            click.echo(
                f"agentjobs: {job}: cancelled before it started [run {item.run_id}]", err=True
            )
        raise Exit(shutdown.code or EXIT_OK)
    if isinstance(outcome, str):
        message = f"{job}: not started: {outcome}; run {item.run_id} stays queued for a later tick"
        if ctx.json:
            _emit_json({"run_id": item.run_id, "started": False, "reason": outcome})
        else:
            click.echo(f"agentjobs: {message}", err=True)
        return
    if ctx.json:
        _emit_json(_attempt_json(outcome))
    else:
        tail = f" ({outcome.error})" if outcome.error else ""
        click.echo(
            f"agentjobs: {job}: {outcome.outcome}{tail} in {outcome.duration_s:.1f}s "
            f"[run {outcome.run_id}, log {outcome.log_path}]",
            err=True,
        )
        if outcome.next == "retry":
            click.echo(
                f"agentjobs: {job}: next attempt at {outcome.next_at}; a later tick runs it",
                err=True,
            )
        elif outcome.next == "dead_letter":
            click.echo(
                f"agentjobs: {job}: dead-lettered; see `agentjobs dlq show {outcome.dlq_id}`",
                err=True,
            )
    if shutdown.code is not None:
        raise Exit(shutdown.code)
    if not outcome.ok:
        raise Exit(EXIT_FAILED)


@cli.command("cancel")
@click.argument("run_id", metavar="RUN")
@click.option(
    "--reason", default="agentjobs cancel", show_default=True, help="Why, for the record."
)
@click.option("--no-wait", is_flag=True, help="Do not wait for a running attempt to be stopped.")
@pass_ctx
def cancel_run(ctx: Context, run_id: str, reason: str, no_wait: bool) -> None:
    """Cancel RUN (a run id, or any unique start of one): a queued run is removed; a running
    attempt is stopped by its supervisor (TERM, kill_grace, KILL of its whole process group,
    on whichever host) and recorded `cancelled`. Never retried, never dead-lettered."""
    from agentjobs import cancel

    engine = _engine(ctx)
    done = cancel.cancel(engine, run_id, _user(), reason)
    settled, record = None, None
    if done.was == "running" and not no_wait:
        settled, record = cancel.wait_settled(engine.store, done)
    if ctx.json:
        outcome = str(record.outcome) if record else None
        _emit_json({**done.to_dict(), "settled": settled, "outcome": outcome})
    else:
        click.echo(_cancelled_text(done, settled, record))
    if settled is False:
        raise Exit(EXIT_FAILED)


def _cancelled_text(
    done: Cancellation, settled: bool | None, record: AttemptFinished | None
) -> str:
    from agentjobs.cancel import POLL_S

    run = f"run {done.run_id} (job {done.job}"
    if done.was == "over":
        return f"{run}) is already cancelled (by {done.by} at {done.at})"
    if done.was == "queued":
        return f"cancelled {run}): removed from the queue before attempt {done.attempt} ran"
    where = f"{run}, attempt {done.attempt}{f' on host {done.host}' if done.host else ''})"
    asked = f"already cancelled by {done.by} at {done.at}; " if done.already else ""
    if settled is None:
        grace = f"{done.kill_grace:g}s" if done.kill_grace is not None else "kill_grace"
        return (
            f"cancelling {where}: {asked}its supervisor stops it within about {POLL_S:g}s "
            f"(TERM, then KILL after {grace})"
        )
    if not settled:
        return (
            f"{where}: {asked}the cancel is recorded, but the attempt still runs: its supervisor "
            "stops it once it looks (or, if it is gone, the run is recorded once its lease or "
            "key is free)"
        )
    if record is None:
        return f"{where}: {asked}no longer running; see `agentjobs history`"
    if record.outcome == "cancelled":
        how = f" with {record.signal}" if record.signal else ""
        return (
            f"cancelled {where}: {asked}stopped{how} after {record.duration_s}s of running; "
            f"log {record.log_path}"
        )
    first = f"{where}: {asked}it ended ({record.outcome}) before its supervisor saw the cancel"
    if record.outcome == "succeeded":
        return f"{first}; nothing was cancelled"
    if record.next == "dead_letter":
        return f"{first}, and is dead-lettered: see `agentjobs dlq show {done.run_id}`"
    return f"{first}; the run is not retried"


@cli.command()
@click.argument("job")
@pass_ctx
def pause(ctx: Context, job: str) -> None:
    """Stop scheduling JOB (no new slots) without editing its file."""
    from agentjobs import operate

    _said(ctx, job, operate.set_paused(_engine(ctx), job, True))


@cli.command()
@click.argument("job")
@pass_ctx
def resume(ctx: Context, job: str) -> None:
    """Schedule JOB again, from now (the paused time is not caught up)."""
    from agentjobs import operate

    _said(ctx, job, operate.set_paused(_engine(ctx), job, False))


def _said(ctx: Context, job: str, what: str) -> None:
    """What pause/resume did: `JOB: what`, or {"job", "result"} as JSON."""
    if ctx.json:
        _emit_json({"job": job, "result": what})
    else:
        click.echo(f"{job}: {what}")


@cli.command()
@click.argument("job", required=False)
@click.option("--since", default=None, help="ISO time or a duration ago (e.g. 24h).")
@click.option(
    "--outcome",
    type=click.Choice(OUTCOMES),
    default=None,
    help="Only attempts with this outcome.",
)
@click.option("--lock", default=None, help="Only runs under this lock key.")
@click.option(
    "--workdir",
    default=None,
    type=click.Path(path_type=Path),
    help="Only runs of jobs working in this directory.",
)
@click.option("--limit", type=int, default=None, help="At most this many rows [default: 50].")
@click.option(
    "--output",
    "-o",
    "history_output",
    type=click.Choice(["text", "json", "jsonl"]),
    default=None,
    help="jsonl: every record (all events, oldest first) exactly as the file backend writes "
    "them, for git or a log pipeline; no limit unless --limit is given.",
)
@pass_ctx
def history(
    ctx: Context,
    job: str | None,
    since: str | None,
    outcome: str | None,
    lock: str | None,
    workdir: Path | None,
    limit: int | None,
    history_output: str | None,
) -> None:
    """Finished attempts and skipped slots (with each agent attempt's cost), newest last."""
    from agentjobs import query
    from agentjobs.clock import iso

    since_at = _since(since)
    store = ctx.store()
    wanted = query.Filters(
        job=job,
        outcome=outcome,
        since=since_at,
        locks=query.locks_of(store, lock, str(workdir) if workdir else None),
    )
    if job is not None and job not in store.applied() and not query.ever_ran(store, job):
        names = ", ".join(sorted(store.applied())) or "none applied"
        raise UserError(f"no job named {job!r} has applied or run (jobs: {names})")
    if history_output == "jsonl":
        _export_records(ctx, job, outcome, since_at, iso(since_at) or "", limit)
        return
    if history_output == "json":
        ctx = Context(ctx.jobs_dir, ctx.state_dir, "json")
    rows = query.records(store, wanted, limit=50 if limit is None else limit)
    # each record as the query layer reads it: with what the attempt cost (claude's own
    # figure, or estimated from tokens) and its turns
    shown = [query.run_row(r) for r in rows]
    if ctx.json:
        _emit_json(
            [
                {**r, "cost_usd": s.cost_usd, "cost_estimated": s.cost_estimated, "turns": s.turns}
                for r, s in zip(rows, shown, strict=True)
            ]
        )
        return
    table = [
        [
            _when(s.time),
            s.job,
            s.run_id,
            str(s.attempt),
            s.trigger,
            s.outcome,
            f"{s.duration_s:.1f}s" if s.duration_s is not None else "-",
            _cost_text(s.cost_usd, s.cost_estimated),
            "-" if s.turns is None else str(s.turns),
            s.detail,
        ]
        for s in shown
    ]
    headers = ["TIME", "JOB", "RUN", "ATTEMPT", "TRIGGER", "OUTCOME", "DURATION", "COST", "TURNS"]
    click.echo(_table([*headers, "DETAIL"], table, width=_terminal_width()))


def _export_records(
    ctx: Context,
    job: str | None,
    outcome: str | None,
    since_at: datetime | None,
    floor: str,
    limit: int | None,
) -> None:
    """`history --output jsonl`: the records, oldest first, one JSON object per line."""
    from agentjobs.records import encode

    out = sys.stdout.buffer
    written = 0
    for record in ctx.store().records(since_at):
        if limit is not None and written >= limit:
            break
        if (
            (job is None or record.get("job") == job)
            and (outcome is None or record.get("outcome") == outcome)
            and record.get("time", "") >= floor
        ):
            out.write(encode(record))
            written += 1
    out.flush()


def _log_json(path: Path, start: int) -> dict[str, Any]:
    """One attempt's log from `start` on, for `logs -o json`."""
    with open(path, "rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", errors="replace")
    number = int(path.name.rsplit(".", 2)[-2])
    return {"attempt": number, "log_path": str(path), "output": text}


def _since(text: str | None) -> datetime | None:
    from datetime import timedelta

    from agentjobs.durations import parse_duration

    if text is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        return _now(text)
    except UserError:
        raise UserError(
            f"--since {text}: neither a duration ago (24h, 7d) nor an ISO time "
            "(2026-11-24T02:00:00Z)"
        ) from None


def _hosts_of_run(store: Store, run_id: str) -> list[str]:
    """The hosts that started attempts of `run_id`, from its records (newest days first)."""
    from datetime import timedelta

    hosts: list[str] = []
    for record in store.records(datetime.now(UTC) - timedelta(days=30), newest_first=True):
        if record.get("run_id") == run_id and record.get("event") == "attempt_started":
            host = str(record.get("host"))
            if host not in hosts:
                hosts.append(host)
            if record.get("attempt") == 1:
                break  # newest first: every later attempt has been seen
    return hosts


@cli.command()
@click.argument("run_id")
@click.option("--attempt", type=int, default=None, help="Only this attempt.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the run runs.")
@click.option("--pretty", is_flag=True, help="Render agent JSON events as readable lines.")
@click.option(
    "--tail",
    "tail_lines",
    type=click.IntRange(min=1),
    default=None,
    help="Only the last N lines of each attempt's log.",
)
@pass_ctx
def logs(
    ctx: Context,
    run_id: str,
    attempt: int | None,
    follow: bool,
    pretty: bool,
    tail_lines: int | None,
) -> None:
    """Print the output of RUN_ID's attempts (streamed: constant memory whatever their size);
    RUN_ID may be a job's name: its latest run."""

    from agentjobs.logfile import chunks, copy_to, tail_start
    from agentjobs.transcript import Transcript

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)

    store = ctx.store()
    run_id = _log_run(store, run_id, attempt)
    numbers = [attempt] if attempt else list(range(1, 101))
    paths = [store.log_path(run_id, n) for n in numbers]
    existing = [p for p in paths if p.exists()]
    if not existing and not follow:
        elsewhere = _hosts_of_run(store, run_id) if store.shared else []
        if elsewhere:  # attempt logs stay on the host that ran the attempt
            raise UserError(
                f"run {run_id}'s logs are on host {', '.join(elsewhere)} (attempt logs stay "
                "where the attempt ran); run `agentjobs logs` there, or see its output tail in "
                "`agentjobs history -o json`"
            )
        raise UserError(f"no logs for run {run_id}; see `agentjobs history`")

    def start_of(path: Path) -> int:
        return tail_start(path, tail_lines) if tail_lines else 0

    if ctx.json and not follow:  # the attempts' output as one JSON document
        _emit_json({"run_id": run_id, "attempts": [_log_json(p, start_of(p)) for p in existing]})
        return
    for path in existing[:-1] if follow else existing:
        if len(existing) > 1:
            click.echo(f"==> {path.name} <==")
        sys.stdout.flush()
        if pretty:
            whole = Transcript(color=sys.stdout.isatty())
            with open(path, "rb") as handle:
                for chunk in chunks(handle, start_of(path)):
                    for line in whole.feed(chunk):
                        click.echo(line)
            for line in whole.finish():
                click.echo(line)
        else:
            copy_to(path, write, start_of(path))
            sys.stdout.buffer.flush()
    if not follow:
        return
    path = existing[-1] if existing else paths[0]
    transcript = Transcript(color=sys.stdout.isatty()) if pretty else None
    _follow(store, run_id, path, start_of(path) if path.exists() else 0, transcript)


def _log_run(store: Store, text: str, attempt: int | None) -> str:
    """The run `logs` shows: a job's latest run, a whole run id, or a unique prefix of one."""
    run_id = text
    if run_id in store.applied():  # a job's name: its latest run
        state = store.runtime().jobs.get(run_id)
        if state is None or not state.last_run_id:
            raise UserError(f"job {run_id} has not run yet; see `agentjobs status`")
        run_id = state.last_run_id
    if not all(c.isalnum() for c in run_id):
        raise UserError(f"{run_id!r} is not a run id; see `agentjobs history`")
    if not store.log_path(run_id, attempt or 1).exists():  # a short id (a prefix)
        from agentjobs.query import resolve_run

        run_id = resolve_run(store, run_id)
    return run_id


def _follow(
    store: Store, run_id: str, path: Path, offset: int, transcript: Transcript | None
) -> None:
    """`logs -f`: print what the attempt's log at `path` gains until the run stops running."""
    import time
    from functools import partial

    from agentjobs.logfile import copy_to

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)

    while True:
        if path.exists():
            # a capped log is trimmed now and then (logfile.CappedLog): go on from its end
            offset = min(offset, path.stat().st_size)
            if transcript is None:
                sys.stdout.flush()
                offset = copy_to(path, write, offset)
                sys.stdout.buffer.flush()
            else:
                offset = copy_to(path, partial(_show_rendered, transcript), offset)
        running = any(
            i.run_id == run_id and i.state == "running" for i in store.runtime().queue.values()
        )
        if not running and path.exists():
            for line in transcript.finish() if transcript is not None else []:
                click.echo(line)
            return
        time.sleep(0.2)


def _show_rendered(transcript: Transcript, data: bytes) -> None:
    for line in transcript.feed(data):
        click.echo(line)


@cli.command()
@pass_ctx
def notifications(ctx: Context) -> None:
    """Notifications not delivered yet (pending a retry) or given up after their tries."""
    from agentjobs.notify import undelivered_rows

    rows = undelivered_rows(ctx.store())
    if ctx.json:
        _emit_json(rows)
        return
    if not rows:
        click.echo("every notification was delivered")
        return
    table = [
        [
            r["state"],
            r["job"] or "-",
            r["event"],
            r["target"],
            _when(r["created_at"]),
            str(r["tries"]),
            _when(r["next_at"]) if r["next_at"] else "-",
            r["error"] or "-",
        ]
        for r in rows
    ]
    click.echo(
        _table(["STATE", "JOB", "EVENT", "TARGET", "CREATED", "TRIES", "NEXT", "ERROR"], table)
    )


@cli.command()
@pass_ctx
def doctor(ctx: Context) -> None:
    """Check each agent job's CLI (on the job's PATH), its version and its auth variables.

    Exit 1 when an agent job's CLI is missing. Variable values are never shown.
    """
    from agentjobs.doctor import check_agents
    from agentjobs.runner import version_of

    checks = check_agents(ctx.store().applied(), os.environ, version_of)
    if ctx.json:
        _emit_json([c.to_dict() for c in checks])
    elif not checks:
        click.echo("no agent jobs applied; run `agentjobs apply`")
    else:
        table = [
            [
                c.job,
                c.agent,
                c.path or f"{c.cli or c.agent}: not found",
                c.version or "-",
                c.describe_auth(),
            ]
            for c in checks
        ]
        click.echo(_table(["JOB", "AGENT", "CLI", "VERSION", "AUTH"], table))
        for c in checks:
            for note in c.notes():
                click.echo(f"{c.job}: {note}")
    if not all(c.found for c in checks):
        raise Exit(EXIT_FAILED)


@cli.group()
def dlq() -> None:
    """The dead-letter queue: runs that failed for good, kept until a human acts."""


@dlq.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include resolved entries.")
@pass_ctx
def dlq_list(ctx: Context, show_all: bool) -> None:
    """Dead letters not resolved yet: open and replayed (with --all, resolved ones too)."""
    from agentjobs import costs

    entries = [
        {**e, **costs.as_fields(costs.run_cost(e["attempts"]))}  # the run's attempts' cost
        for e in ctx.store().dead_letters()
        if show_all or e["status"] != "resolved"
    ]
    if ctx.json:
        _emit_json(entries)
        return
    if not entries:
        click.echo("no dead letters")
        return
    table = [
        [
            e["id"],
            e["job"],
            e["status"],
            _when(e["created_at"]),
            str(len(e["attempts"])),
            _cost_text(e["cost_usd"], e["cost_estimated"]),
            e["attempts"][-1]["outcome"] if e["attempts"] else "-",
            e["reason"],
        ]
        for e in entries
    ]
    headers = ["ID", "JOB", "STATUS", "CREATED", "ATTEMPTS", "COST", "LAST", "REASON"]
    click.echo(_table(headers, table))


@dlq.command("show")
@click.argument("entry_id")
@pass_ctx
def dlq_show(ctx: Context, entry_id: str) -> None:
    """Everything about one dead letter: the spec as it was and every attempt."""
    from agentjobs import costs

    store = ctx.store()
    entry = store.dead_letter(_dead_letter_id(store, entry_id))
    if entry is None:
        raise UserError(f"no dead letter {entry_id!r}; see `agentjobs dlq list`")
    spent = costs.run_cost(entry["attempts"])
    if ctx.json:
        _emit_json({**entry, **costs.as_fields(spent)})
        return
    click.echo(
        f"dead letter {entry['id']}: job {entry['job']}, {entry['status']}, "
        f"created {_when(entry['created_at'])}"
    )
    click.echo(f"reason: {entry['reason']}")
    if spent is not None:
        count = len(entry["attempts"])
        click.echo(
            f"cost: {_cost_text(spent.usd, spent.estimated)} over {count} "
            f"attempt{'s' * (count != 1)}"
        )
    if entry.get("note"):
        click.echo(f"note: {entry['note']}")
    for replay in entry.get("replays", []):
        click.echo(f"replayed as run {replay['run_id']} at {_when(replay['at'])}")
    for a in entry["attempts"]:
        cost = costs.attempt_cost(a)
        click.echo(
            f"- attempt {a['attempt']}: {a['outcome']} "
            f"{a.get('error') or ''} ({_when(a['started_at'])} .. {_when(a['finished_at'])}) "
            f"log {a.get('log_path')}"
            + (f", cost {_cost_text(cost.usd, cost.estimated)}" if cost else "")
        )
        if a.get("output_tail"):
            for line in a["output_tail"].rstrip().splitlines()[-10:]:
                click.echo(f"    | {line}")


def _dead_letter_id(store: Store, text: str) -> str:
    """A dead letter's whole id from a unique prefix of it (`query.resolve_dead_letter`)."""
    from agentjobs.query import resolve_dead_letter

    return resolve_dead_letter(store, text)


@dlq.command("replay")
@click.argument("entry_id")
@pass_ctx
def dlq_replay(ctx: Context, entry_id: str) -> None:
    """Enqueue a fresh run of the dead letter's job (new attempts), linked to it."""
    from agentjobs import operate

    engine = _engine(ctx)
    entry_id = _dead_letter_id(engine.store, entry_id)
    item = operate.replay(engine, entry_id)
    if ctx.json:
        _emit_json({"run_id": item.run_id, "dlq_id": entry_id})
    else:
        click.echo(
            f"replaying {entry_id} as run {item.run_id} (job {item.job}); the next tick runs it"
        )


@dlq.command("resolve")
@click.argument("entry_id")
@click.option("--note", required=True, help="What was done about it.")
@pass_ctx
def dlq_resolve(ctx: Context, entry_id: str, note: str) -> None:
    """Mark a dead letter as handled (it is kept, never deleted)."""
    from agentjobs import operate

    engine = _engine(ctx)
    entry_id = _dead_letter_id(engine.store, entry_id)
    entry = operate.resolve(engine, entry_id, note)
    if ctx.json:
        _emit_json(entry)
        return
    click.echo(f"resolved {entry_id}")


@cli.group()
def review() -> None:
    """The review inbox: runs whose branch waits for a person (`land: {mode: review}`, or a
    `land: merge` that conflicted). Each decision is recorded with who made it."""


@review.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include decided runs.")
@pass_ctx
def review_list(ctx: Context, show_all: bool) -> None:
    """Runs awaiting a decision, oldest first (with --all, decided ones too)."""
    from agentjobs import review as inbox

    entries = inbox.inbox(ctx.store(), everything=show_all)
    if ctx.json:
        _emit_json([e.to_dict() for e in entries])
        return
    if not entries:
        click.echo("no runs awaiting review" + ("" if show_all else " (--all: decided ones)"))
        return
    rows = [
        [
            e.run_id,
            e.job,
            e.status if e.status != "pending" else ("conflict" if e.conflict else "pending"),
            _when(e.created_at),
            f"{e.branch} -> {e.into or '?'} ({e.strategy})",
            inbox.diff_summary(e.diffstat),
            _cost_text(e.cost_usd, False) if e.cost_usd is not None else "-",
        ]
        for e in entries
    ]
    headers = ["RUN", "JOB", "STATUS", "FINISHED", "LANDS", "CHANGES", "COST"]
    click.echo(_table(headers, rows))


@review.command("show")
@click.argument("run_id")
@click.option("--stat", "stat_only", is_flag=True, help="The diffstat only, not the whole diff.")
@pass_ctx
def review_show(ctx: Context, run_id: str, stat_only: bool) -> None:
    """One run's work: diffstat, full diff, the agent's final message, verify output, cost."""
    from agentjobs import review as inbox

    shown = inbox.show(ctx.store(), run_id)
    e = shown.review
    if ctx.json:
        _emit_json(
            {
                **e.to_dict(),
                "diff": shown.diff,
                "final_message": shown.final_message,
                "verify": shown.verify,
            }
        )
        return
    click.echo(f"run {e.run_id}: job {e.job}, {e.status}, finished {_when(e.created_at)}")
    click.echo(f"branch {e.branch} ({(e.base or '?')[:12]}..{(e.commit or '?')[:12]})")
    click.echo(f"lands into {e.into or '?'} by {e.strategy} (workdir {e.workdir})")
    if e.cost_usd is not None:
        click.echo(f"cost: {_cost_text(e.cost_usd, False)}")
    if e.conflict:
        click.echo(f"conflict: {e.conflict}")
    if e.decision:
        d = e.decision
        said = "".join(
            f", {k} {d[k]}" for k in ("note", "guidance", "landed", "retry_run") if k in d
        )
        click.echo(f"decided: {d.get('action')} by {d.get('by')} at {_when(d.get('at'))}{said}")
    click.echo("")
    click.echo(e.diffstat or "(no diffstat)")
    if shown.final_message:
        click.echo("\nThe agent's final message:")
        click.echo("\n".join(f"  {line}" for line in shown.final_message.splitlines()))
    if shown.verify is not None:
        click.echo("\nverify:")
        click.echo("\n".join(f"  {line}" for line in shown.verify.rstrip().splitlines()))
    if not stat_only:
        click.echo("")
        click.echo(shown.diff.rstrip() or "(no diff)")
    if e.status == "pending":
        click.echo(
            f"\ndecide: agentjobs review approve|reject|retry {e.run_id}"
            " (reject --note ..., retry --guidance ...)"
        )


@review.command("approve")
@click.argument("run_id")
@pass_ctx
def review_approve(ctx: Context, run_id: str) -> None:
    """Land the run's branch into its `into` branch (its strategy), and record who approved."""
    from agentjobs import review as inbox

    engine = _engine(ctx)
    found = inbox.entry(engine.store, run_id)
    decided = inbox.approve(engine, found.run_id, inbox.who(found.workdir))
    _decided(ctx, decided)


@review.command("reject")
@click.argument("run_id")
@click.option("--note", required=True, help="Why it does not land (recorded).")
@pass_ctx
def review_reject(ctx: Context, run_id: str, note: str) -> None:
    """Do not land the run; its branch is kept for reference."""
    from agentjobs import review as inbox

    engine = _engine(ctx)
    found = inbox.entry(engine.store, run_id)
    _decided(ctx, inbox.reject(engine, found.run_id, inbox.who(found.workdir), note))


@review.command("retry")
@click.argument("run_id")
@click.option("--guidance", required=True, help="What the next run should do differently.")
@click.option("--note", default=None, help="Why this run is not accepted (recorded).")
@pass_ctx
def review_retry(ctx: Context, run_id: str, guidance: str, note: str | None) -> None:
    """Queue a new run whose prompt carries the guidance, the note and what this run changed
    (a command job reads the guidance in AGENTJOBS_GUIDANCE)."""
    from agentjobs import review as inbox

    engine = _engine(ctx)
    found = inbox.entry(engine.store, run_id)
    decided, item = inbox.retry(engine, found.run_id, inbox.who(found.workdir), guidance, note)
    if ctx.json:
        _emit_json({**decided.to_dict(), "retry_run": item.run_id})
        return
    click.echo(
        f"run {decided.run_id} sent back by {(decided.decision or {}).get('by')}; "
        f"queued run {item.run_id} of {item.job} with the guidance; the next tick runs it"
    )


def _decided(ctx: Context, decided: Review) -> None:
    if ctx.json:
        _emit_json(decided.to_dict())
        return
    d = decided.decision or {}
    if d.get("action") == "approve":
        how = "was already in" if d.get("already") else "landed on"
        click.echo(
            f"run {decided.run_id} approved by {d.get('by')}: {decided.branch} {how} "
            f"{decided.into} ({str(d.get('landed'))[:12]})"
        )
    else:
        click.echo(f"run {decided.run_id} rejected by {d.get('by')}; {decided.branch} is kept")


@cli.command()
@pass_ctx
def gc(ctx: Context) -> None:
    """Apply retention (old logs, old record days) and remove finished runs' worktrees."""
    from agentjobs import retention, worktree

    store = ctx.store()
    active = {item.run_id for item in store.runtime().queue.values()}
    removed = worktree.collect(store.local_dir / "worktrees", active)
    done = retention.collect(store, datetime.now(UTC)) if store.exists() else {}
    if ctx.json:
        _emit_json({"removed": removed, **done})
        return
    for path in removed:
        click.echo(f"removed worktree {path}")
    click.echo(f"{len(removed)} worktree(s) removed")
    if done:
        click.echo(
            f"{done['logs_removed']} old log(s) removed, "
            f"{done['record_days_archived']} record day(s) archived"
        )


@cli.command()
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write atomically to this file (node_exporter's textfile collector) instead of printing.",
)
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def metrics(ctx: Context, textfile: Path | None, now_text: str | None) -> None:
    """Prometheus metrics: queue, running, attempts, cost and durations by job, dead letters."""
    from agentjobs.metrics import render, write_textfile

    text = render(ctx.store(), _now(now_text))
    if textfile is None:
        click.echo(text, nl=False)
        return
    try:
        write_textfile(textfile, text)
    except StateWriteError:
        raise  # one line naming the path and what to do already
    except OSError as exc:
        raise UserError(f"cannot write {textfile}: {exc.strerror}") from None


def _seconds_text(value: float | None) -> str:
    from agentjobs.durations import format_duration

    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 60 else format_duration(value)


def _rate_text(totals: dict[str, Any]) -> str:
    rate = totals["failure_rate"]
    runs = totals["runs"]
    return (
        f"{totals['processed']} processed, {totals['failed']} failed"
        f" ({'-' if rate is None else f'{rate:.0%}'}), {totals['dead_lettered']} dead-lettered"
        f" ({runs} run{'s' * (runs != 1)})"
    )


def _render_cost_review(cost: dict[str, Any]) -> None:
    """The stats' cost section: in all, by day, by job and by account (last 7 budget days)."""
    total = cost["total"]
    spent = _cost_text(total["cost_usd"], total["cost_estimated"])
    click.echo(
        f"cost, last 7 days ({cost['timezone']} days): {spent} in "
        f"{total['runs']} run{'s' * (total['runs'] != 1)}, "
        f"{total['attempts']} attempt{'s' * (total['attempts'] != 1)}"
    )
    sections = (
        ("DAY", "day", cost["days"]),
        ("JOB", "job", cost["jobs"]),
        ("ACCOUNT", "account", cost["accounts"]),
    )
    for header, key, rows in sections:
        if not rows:
            continue
        click.echo("")
        table = [
            [
                r[key],
                _cost_text(r["cost_usd"], r["cost_estimated"]),
                str(r["runs"]),
                str(r["attempts"]),
            ]
            for r in rows
        ]
        click.echo(_table([header, "COST", "RUNS", "ATTEMPTS"], table))


@cli.command()
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def stats(ctx: Context, now_text: str | None) -> None:
    """The morning review: today and 7 days, durations and cost by job, dead letters, held jobs."""
    from agentjobs.stats import morning_review

    review = morning_review(ctx.store(), _now(now_text))
    if ctx.json:
        _emit_json(review)
        return
    click.echo(f"today:       {_rate_text(review['today'])}")
    click.echo(f"last 7 days: {_rate_text(review['last_7_days'])}")
    if review["jobs"]:
        click.echo("")
        rows = [
            [
                j["job"],
                str(j["runs"]),
                str(j["attempts"]),
                str(j["failed"]),
                _seconds_text(j["avg_duration_s"]),
                _seconds_text(j["p95_duration_s"]),
                _seconds_text(j["max_duration_s"]),
            ]
            for j in review["jobs"]
        ]
        headers = ["JOB (7 DAYS)", "RUNS", "ATTEMPTS", "FAILED", "AVG", "P95", "MAX"]
        click.echo(_table(headers, rows))
        slowest = ", ".join(
            f"{j['job']} {_seconds_text(j['p95_duration_s'])}" for j in review["slowest"]
        )
        click.echo(f"slowest (p95): {slowest}")
    if review["cost"]["total"]["cost_usd"] is not None:
        click.echo("")
        _render_cost_review(review["cost"])
    if review["ledger"] is not None:
        click.echo("")
        _render_spend(review["ledger"])
    click.echo("")
    open_letters = review["dead_letters_open"]
    click.echo(f"open dead letters: {len(open_letters)}")
    for e in open_letters[:5]:
        click.echo(f"  {e['id']}  {e['job']}  {e['created_at']}  {e['reason']}")
    if len(open_letters) > 5:
        click.echo(f"  ... {len(open_letters) - 5} more: `agentjobs dlq list`")
    held = review["held_jobs"]
    click.echo(f"held jobs: {len(held)}")
    for h in held:
        until = f" until {_when(h['until'])}" if h["until"] else ""
        click.echo(f"  {h['job']}: {h['reason']}{until}")


# -- install ---------------------------------------------------------------------------------


@cli.group()
def install() -> None:
    """Print or install the crontab entry or systemd user units that run agentjobs."""


def _install_args(ctx: Context) -> tuple[str, str, str, str]:
    """(executable, jobs dir, state dir, PATH): absolute, as cron and systemd need them."""
    import shutil

    beside = Path(sys.executable).parent / "agentjobs"  # the real script, not a pyenv shim
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("agentjobs")
    if found is None:
        raise UserError("cannot find the agentjobs executable; install agentjobs with pip")
    path_env = os.environ.get("PATH") or os.defpath
    return (
        os.path.abspath(found),
        os.path.abspath(ctx.jobs_dir),
        os.path.abspath(ctx.state_dir),
        path_env,
    )


@install.command("cron")
@click.option("--write", is_flag=True, help="Add it to your crontab (replaces an earlier one).")
@click.option(
    "--log",
    "log_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Append tick output here.  [default: STATE_DIR/tick.log]",
)
@pass_ctx
def install_cron(ctx: Context, write: bool, log_file: Path | None) -> None:
    """The crontab entry that runs `tick` every minute from this directory."""
    import shutil

    from agentjobs.install import add_to_crontab, cron_line
    from agentjobs.runner import communicate

    executable, jobs_dir, state_dir, path_env = _install_args(ctx)
    log = os.path.abspath(log_file or Path(state_dir) / "tick.log")
    try:
        line = cron_line(executable, jobs_dir, state_dir, path_env, log, workdir=os.getcwd())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if write:
        crontab = shutil.which("crontab")
        if crontab is None:
            raise UserError("crontab not found on PATH; install cron or add the line by hand")
        code, existing, errors = communicate([crontab, "-l"])
        if code != 0:
            if code is None or "no crontab" not in errors.lower():
                raise UserError(f"crontab -l failed: {errors.strip()}")
            existing = ""  # no crontab yet
        code, _, errors = communicate([crontab, "-"], add_to_crontab(existing, line, state_dir))
        if code != 0:
            raise UserError(f"crontab - failed: {errors.strip()}")
        Path(log).parent.mkdir(parents=True, exist_ok=True)  # else the redirection fails
    if ctx.json:
        _emit_json({"line": line, "written": write})
        return
    click.echo(line)
    if write:
        click.echo("added to your crontab (`crontab -l` shows it)", err=True)


@install.command("systemd")
@click.option("--write", is_flag=True, help="Write the unit files (never runs systemctl).")
@click.option("--daemon", is_flag=True, help="One long-running `daemon` service, no timer.")
@click.option(
    "--dir",
    "unit_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write here.  [default: ~/.config/systemd/user]",
)
@click.option("--name", default="agentjobs", show_default=True, help="Unit name prefix.")
@pass_ctx
def install_systemd(
    ctx: Context, write: bool, daemon: bool, unit_dir: Path | None, name: str
) -> None:
    """systemd user units: a `tick` service and a minutely timer, or a daemon service."""
    from agentjobs.install import DEFAULT_KILL_GRACE, systemd_next_steps, systemd_units

    executable, jobs_dir, state_dir, path_env = _install_args(ctx)
    store = ctx.store()
    graces = [
        float(job.spec.get("kill_grace") or DEFAULT_KILL_GRACE)
        for job in (store.applied().values() if store.exists() else ())
    ]
    try:
        units = systemd_units(
            executable,
            jobs_dir,
            state_dir,
            path_env,
            os.getcwd(),
            name=name,
            daemon=daemon,
            kill_grace=max(graces, default=DEFAULT_KILL_GRACE),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    written: list[str] = []
    if write:
        from agentjobs.store.files import atomic_write

        config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        folder = unit_dir or Path(config) / "systemd" / "user"
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, text in units.items():
            atomic_write(folder / file_name, text.encode())
            written.append(str(folder / file_name))
    steps = systemd_next_steps(units)
    if ctx.json:
        _emit_json({"units": units, "written": written, "next": steps})
        return
    if not write:
        for file_name, text in units.items():
            click.echo(f"# {file_name}\n{text}")
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"{'then' if write else 'after writing them (--write)'} run: {steps}")


_log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),  # logs.FORMATS; logs.py imports loguru when used
    default="text",
    show_default=True,
    help="Log lines: timestamped text, or one JSON object a line (journald, log shippers).",
)


@cli.command()
@click.option(
    "--max-concurrent",
    type=click.IntRange(1, 1000),
    default=None,
    help="Override the global config's max_concurrent.",
)
@click.option(
    "--watch",
    "watch_files",
    is_flag=True,
    help="Also validate and apply the jobs directory on every change.",
)
@click.option("--prune", is_flag=True, help="With --watch: delete jobs whose file is gone.")
@click.option("--now", "now_text", default=None, hidden=True)
@_log_format_option
@_host_options
@pass_ctx
def daemon(
    ctx: Context,
    max_concurrent: int | None,
    watch_files: bool,
    prune: bool,
    now_text: str | None,
    log_format: str,
    host_id: str | None,
    labels: str,
) -> None:
    """Tick continuously: sleep until the next due slot, wake on apply, stop on SIGTERM."""
    import threading

    from agentjobs import daemon as daemon_loop
    from agentjobs import logs

    log = logs.configure(log_format)

    # SIGHUP must not end the daemon; the global config is read again on every pass anyway
    with _Shutdown(ignore_hangup=True) as shutdown:
        stop = shutdown.stop
        store = ctx.store()
        clock = _clock(now_text)

        def one_pass(event: threading.Event) -> Engine:
            # an engine per pass: each pass reads the global config anew
            engine = _engine(ctx, max_concurrent=max_concurrent, host=host_id, labels=labels)
            engine.stop = event  # a signal stops the running attempts too
            engine.store = store
            engine.clock = clock
            return engine

        if watch_files:
            from agentjobs import watch as watching

            if not ctx.jobs_dir.is_dir():
                raise UserError(f"jobs directory {ctx.jobs_dir} not found; pass --jobs-dir")
            threading.Thread(
                target=watching.run,
                args=(ctx.jobs_dir, ctx.store(), prune, stop, _lock_timeout(), log),
                daemon=True,
            ).start()
        try:
            daemon_loop.run(store, one_pass, stop, log)
        except UserError as exc:  # in the daemon's log format, not a line of another shape
            log.bind(source="daemon").error(f"error: {exc}")
            raise Exit(EXIT_INVALID) from None


@cli.command()
@click.option("--prune", is_flag=True, help="Delete applied jobs whose file is gone.")
@_log_format_option
@pass_ctx
def watch(ctx: Context, prune: bool, log_format: str) -> None:
    """Validate and apply the jobs directory on every change (Ctrl-C to stop)."""
    from agentjobs import logs
    from agentjobs import watch as watching

    if not ctx.jobs_dir.is_dir():
        raise UserError(f"jobs directory {ctx.jobs_dir} not found; pass --jobs-dir")
    with _Shutdown() as shutdown:
        watching.run(
            ctx.jobs_dir,
            ctx.store(),
            prune,
            shutdown.stop,
            _lock_timeout(),
            logs.configure(log_format),
        )


@cli.group()
def db() -> None:
    """The PostgreSQL backend's schema."""


@db.command("migrate")
@pass_ctx
def db_migrate(ctx: Context) -> None:
    """Apply the schema migrations this agentjobs needs (also done on first use)."""
    from agentjobs.store import is_database_url
    from agentjobs.store.postgres import MIGRATIONS, PostgresStore

    if not is_database_url(ctx.state_dir):
        raise UserError(
            "db migrate works on a PostgreSQL state: pass --state-dir postgresql://... or set "
            "AGENTJOBS_DATABASE_URL"
        )
    store = PostgresStore(ctx.state_dir)
    done = store.migrate()
    if ctx.json:
        _emit_json({"applied": done, "version": len(MIGRATIONS)})
    elif done:
        click.echo(
            f"applied migration(s) {', '.join(map(str, done))} to {store.describe()}; "
            f"schema version {len(MIGRATIONS)}"
        )
    else:
        click.echo(f"{store.describe()} is up to date (schema version {len(MIGRATIONS)})")


@cli.command()
@click.option("--force", is_flag=True, help="Rebuild runtime.json even if it looks sound.")
@_lock_timeout_option
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def repair(ctx: Context, force: bool, lock_timeout: float, now_text: str | None) -> None:
    """Rebuild a missing or damaged runtime.json from the applied jobs and the run records."""
    from agentjobs.repair import repair as rebuild_runtime

    result = rebuild_runtime(ctx.store(), _now(now_text), force=force, lock_timeout=lock_timeout)
    if ctx.json:
        _emit_json(result.as_dict())
        return
    retries = len(result.retries)
    click.echo(
        f"rebuilt {result.path}: {len(result.jobs)} job{'s' * (len(result.jobs) != 1)}, "
        f"{retries} pending retr{'ies' if retries != 1 else 'y'}, "
        f"{len(result.recovering)} attempt{'s' * (len(result.recovering) != 1)} to recover"
    )
    for item in result.retries:
        click.echo(f"  {item.job}: run {item.run_id} attempt {item.attempt} at {item.not_before}")
    for item in result.recovering:
        click.echo(
            f"  {item.job}: run {item.run_id} attempt {item.attempt} started and never "
            "finished: the next tick recovers it"
        )
    if result.kept:
        click.echo(f"the old file is kept as {result.kept}")
    click.echo("pauses are not in the run records: pause jobs again if needed", err=True)


@cli.group()
def state() -> None:
    """Move a deployment: export the state as JSONL, import it elsewhere."""


@state.command("export")
@click.option(
    "--file",
    "-f",
    "target",
    type=click.Path(path_type=Path),
    default=None,
    help="Write here instead of standard output.",
)
@pass_ctx
def state_export(ctx: Context, target: Path | None) -> None:
    """Applied jobs, states, queue, dead letters and every record, one JSON object a line."""
    from agentjobs import transfer

    lines = transfer.export(ctx.store(), datetime.now(UTC))
    if target is None:
        for line in lines:
            click.echo(line, nl=False)
        return
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)  # a failed export leaves nothing behind
    click.echo(f"exported to {target}", err=True)


@state.command("import")
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@pass_ctx
def state_import(ctx: Context, source: Path) -> None:
    """Load an export into this (empty) state directory."""
    from agentjobs import transfer

    with open(source, encoding="utf-8") as handle:
        counts = transfer.import_(ctx.store(), handle, _lock_timeout())
    if ctx.json:
        _emit_json(counts)
        return
    click.echo(", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "nothing")


# -- the web dashboard and the static report (agentjobs/web/, issue 14) -----------------------


def _web(module: str) -> Any:
    """A module of the dashboard, or one line saying to install the `ui` extra."""
    import importlib

    try:
        return importlib.import_module(f"agentjobs.web.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("agentjobs"):
            from agentjobs.web import MISSING

            raise UserError(MISSING.format(name=exc.name)) from None
        raise


@cli.command()
@click.option(
    "--host",
    "bind",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but a loopback address needs the access token.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any."
)
@click.option("--read-only", is_flag=True, help="Show everything, offer no actions.")
@click.option("--now", "now_text", default=None, hidden=True)
@click.option("--poll-interval", type=click.FloatRange(0.05, 60), default=1.0, hidden=True)
@_log_format_option
@pass_ctx
def ui(
    ctx: Context,
    bind: str,
    port: int,
    read_only: bool,
    now_text: str | None,
    poll_interval: float,
    log_format: str,
) -> None:
    """Serve the web dashboard: overview, timeline, jobs, runs, dead letters, a JSON API
    (needs the `ui` extra: pip install 'agentjobs[ui]'). Logs as the daemon does: timestamped
    lines, or JSON objects with --log-format json."""
    from agentjobs import logs

    server = _web("server")
    _web("app")  # every dependency, before anything is printed
    log = logs.configure(log_format).bind(source="ui")

    def say(line: str) -> None:
        log.info(line)

    server.serve(
        ctx.store,
        host=bind,
        port=port,
        read_only=read_only,
        jobs_dir=ctx.jobs_dir if ctx.jobs_dir.is_dir() else None,
        clock=_clock(now_text),
        say=say,
        poll_interval=poll_interval,
    )


@cli.command()
@click.option(
    "--html",
    "html_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Write the report here, as one self-contained HTML file.",
)
@click.option(
    "--span",
    type=click.Choice(["6h", "24h", "7d"]),
    default="24h",
    show_default=True,
    help="How much of the timeline to show.",
)
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def report(ctx: Context, html_file: Path, span: str, now_text: str | None) -> None:
    """The dashboard's overview, timeline and failures as one static HTML file to commit or
    mail (needs the `ui` extra)."""
    size = _web("report").write_report(ctx.store(), html_file, _now(now_text), span)
    if ctx.json:
        _emit_json({"file": str(html_file), "bytes": size})
    else:
        click.echo(f"wrote {html_file} ({size} bytes)")


# -- entry point -----------------------------------------------------------------------------


def _crash_report(state_dir: str) -> str:
    import platform
    import tempfile

    from agentjobs.store import is_database_url

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    body = (
        f"agentjobs {__version__} crashed at {stamp}\n"
        f"python {platform.python_version()} on {platform.platform()}\n"
        f"argv: {sys.argv!r}\n\n{traceback.format_exc()}"
    )
    if is_database_url(state_dir):
        from agentjobs.store.postgres import default_local_dir

        state_dir = str(default_local_dir())
    for folder in (Path(state_dir), Path(tempfile.gettempdir())):
        try:
            if folder.is_dir():
                path = folder / f"crash-{stamp}-{os.getpid()}.txt"
                path.write_text(body)
                return str(path)
        except OSError:
            continue
    return "(could not write a crash report)"


# -- describe and holds (the query layer, query.py) ---------------------------------------------


@cli.command()
@click.argument("job")
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def describe(ctx: Context, job: str, now_text: str | None) -> None:
    """Everything about JOB: its spec and unapplied edits, state, next fire times, queue items
    and why they wait, holds, recent runs, open dead letters. Given a run id (or a unique start
    of one) instead: that run's attempts, where it stands and what it cost."""
    from agentjobs import query

    store = ctx.store()
    now = _now(now_text)
    detail = query.describe(store, job, now, jobs_dir=ctx.jobs_dir)
    if detail is None and job.isalnum() and job.upper() == job:  # a run id, or its start
        _describe_run(ctx, store, query.resolve_run(store, job), now)
        return
    if detail is None:
        names = ", ".join(sorted(store.applied())) or "none applied"
        raise UserError(f"no applied job named {job!r} (jobs: {names})")
    if ctx.json:
        _emit_json(query.as_json(detail))
        return
    click.echo("\n".join(_describe_lines(detail, now)))


def _describe_run(ctx: Context, store: Store, run_id: str, now: datetime) -> None:
    """`describe RUN`: the run's attempts (from its records), where it stands, its dead
    letter, what it cost."""
    from agentjobs import query

    found = query.run(store, run_id, now)
    if found is None:
        raise UserError(f"nothing is known of run {run_id}; see `agentjobs history`")
    if ctx.json:
        _emit_json(query.as_json(found))
        return
    click.echo(f"Run:          {found.run_id}")
    click.echo(f"Job:          {found.job}")
    if found.wait is not None:
        click.echo(f"Now:          {found.wait.state}; {found.wait.reason}")
        if found.wait.progress_text:
            click.echo(f"Progress:     {found.wait.progress_text}")
    click.echo(f"Cost:         {_cost_text(found.cost_usd, False) if found.cost_usd else '-'}")
    click.echo("Attempts:")
    for r in found.records:
        if r.get("event") == "attempt_finished":
            row = query.run_row(r)
            click.echo(
                f"  {row.attempt}: {row.outcome} at {_when(row.time)} after "
                f"{row.duration_s or 0:.1f}s, cost {_cost_text(row.cost_usd, row.cost_estimated)}"
                + (f": {row.detail}" if row.detail else "")
            )
    if found.dead_letter is not None:
        click.echo(
            f"Dead letter:  {found.dead_letter.get('status')}: {found.dead_letter['reason']}"
        )
    review = query.review_of(store, found.run_id)
    if review is not None:
        d = review.decision or {}
        said = f" by {d.get('by')} at {_when(d.get('at'))}" if d else ""
        click.echo(
            f"Review:       {review.status}{said} ({review.branch} -> {review.into}); "
            f"see `agentjobs review show {review.run_id}`"
        )


def _describe_lines(d: Any, now: datetime) -> list[str]:
    """`describe` as text: kubectl-style sections."""
    from agentjobs.durations import format_duration

    row = d.row
    spec = d.spec
    agent = spec.get("agent") or {}
    state = "enabled" if row.enabled else "disabled in its file"
    if row.paused:
        state += ", paused"
    lines = [
        f"Name:         {d.job}",
        f"File:         {d.file or spec.get('source') or '-'}",
        f"Schedule:     {row.schedule}",
        f"Lock key:     {row.lock}",
        f"State:        {state}",
        f"Last run:     {_when(row.last)} ({row.result or 'never ran'})",
    ]
    if row.needs:
        lines.append(f"Triggered by: {', '.join(row.needs)} (needs)")
    if agent:
        fallback = ", ".join(f["kind"] for f in agent.get("fallback") or ())
        account = agent.get("limit_key") or agent.get("kind")
        lines.append(
            f"Agent:        {agent.get('kind')} (account {account}"
            f"{', model ' + agent['model'] if agent.get('model') else ''}"
            f"{', fallback ' + fallback if fallback else ''})"
        )
    if spec.get("budget"):
        caps = ", ".join(f"{k} ${v:g}" for k, v in spec["budget"].items() if v is not None)
        lines.append(f"Budget:       {caps}")
    if d.ledger is not None and (d.ledger.spend or d.ledger.caps):
        lines.append(f"Spend today:  {_ledger_text(d.ledger)}")
    lines.append("Unapplied edits:" if d.drift else "Unapplied edits: none")
    lines += [f"  {change}" for change in d.drift]
    lines.append("Next fire times:" if d.fire_times else "Next fire times: none")
    lines += [f"  {_when(t)}" for t in d.fire_times]
    lines.append("Queue:" if d.waits else "Queue: empty")
    for w in d.waits:
        lines.append(f"  run {w.run_id} attempt {w.attempt} ({w.trigger}): {w.state}; {w.reason}")
        if w.progress_text:
            lines.append(f"    progress: {w.progress_text}")
    if d.holds:
        lines.append("Holds:")
        lines += [f"  {h.kind}: {h.reason}" for h in d.holds]
    lines.append("Recent runs:" if d.runs else "Recent runs: none")
    if d.runs:
        table = [
            [
                _when(r.time),
                r.run_id,
                str(r.attempt),
                r.outcome,
                f"{format_duration(r.duration_s)}" if r.duration_s is not None else "-",
                _cost_text(r.cost_usd, r.cost_estimated),
                r.detail[:60],
            ]
            for r in d.runs
        ]
        headers = ["TIME", "RUN", "ATTEMPT", "OUTCOME", "DURATION", "COST", "DETAIL"]
        lines += ["  " + line for line in _table(headers, table).splitlines()]
    lines.append("Dead letters:" if d.dead_letters else "Dead letters: none open")
    for e in d.dead_letters:
        lines.append(f"  {e.get('id')} {_when(e.get('created_at'))}: {e.get('reason')}")
    if d.reviews:
        lines.append("Awaiting review (agentjobs review show RUN):")
    for e in d.reviews:
        why = f"conflict: {str(e['conflict'])[:120]}" if e.get("conflict") else e.get("branch")
        lines.append(f"  {e.get('run_id')} {_when(e.get('created_at'))}: {why}")
    return lines


def _cost_text(cost: float | None, estimated: bool) -> str:
    """`$0.1234`, `~$0.1234` when estimated from tokens, `-` when unknown."""
    if cost is None:
        return "-"
    return f"{'~' if estimated else ''}${cost:.4f}"


def _ledger_text(ledger: Any) -> str:
    scopes = sorted(set(ledger.spend) | set(ledger.caps), key=lambda s: (s != "total", s))
    parts = []
    for scope in scopes:
        spent = float(ledger.spend.get(scope, 0.0))
        cap = ledger.caps.get(scope)
        parts.append(f"{scope} ${spent:.2f}" + (f" of ${cap:.2f}" if cap else ""))
    return ", ".join(parts)


@cli.group(invoke_without_command=True)
@click.option("--now", "now_text", default=None, hidden=True)
@click.pass_context
def holds(click_ctx: click.Context, now_text: str | None) -> None:
    """Usage-limit holds in force, and budgets or rates holding items back."""
    if click_ctx.invoked_subcommand is not None:
        return
    from agentjobs import query

    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    store = ctx.store()
    rows = query.holds(store, _now(now_text))
    released = store.read_json("hold_releases") or []
    if ctx.json:
        _emit_json({"holds": query.as_json(rows), "released": released[-20:]})
        return
    if not rows:
        click.echo("no holds in force")
    else:
        table = [[h.kind, h.key, _when(h.until), ", ".join(h.jobs) or "-"] for h in rows]
        click.echo(_table(["KIND", "KEY", "UNTIL", "JOBS"], table))
    for entry in released[-5:]:
        click.echo(
            f"released early: {entry['key']} (held until {_when(entry['until'])}) by "
            f"{entry['by']} at {_when(entry['released_at'])}"
        )


@holds.command("release")
@click.argument("key")
@pass_ctx
def holds_release(ctx: Context, key: str) -> None:
    """Lift account KEY's usage-limit hold now (recorded: who and when)."""
    from agentjobs import operate

    who = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    until = operate.release_hold(_engine(ctx), key, who)
    if ctx.json:
        _emit_json({"key": key, "released": True, "until": until, "by": who})
        return
    click.echo(f"{key}: usage-limit hold released (it held until {_when(until)})")


def _output_everywhere(group: click.Group) -> None:
    """`-o/--output text|json` after any verb too (`agentjobs status -o json`), as before it:
    each command without an `--output` of its own gets one that overrides the group's."""

    def chosen(click_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None and isinstance(click_ctx.obj, Context):
            click_ctx.obj = dataclasses.replace(click_ctx.obj, output=value)

    for command in group.commands.values():
        if isinstance(command, click.Group):
            _output_everywhere(command)
        if any("--output" in getattr(p, "opts", ()) for p in command.params):
            continue
        command.params.append(
            click.Option(
                ["--output", "-o"],
                type=click.Choice(["text", "json"]),
                default=None,
                expose_value=False,
                callback=chosen,
                help="Output format (also accepted before the verb).",
            )
        )


_output_everywhere(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (STYLE.md rule 3)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="agentjobs", standalone_mode=False)
    except Exit as exc:
        return exc.code
    except InvalidJobError as exc:
        from agentjobs.validate import summary

        _render_problems(exc.problems)
        click.echo(f"agentjobs: {summary(exc.problems)}; nothing was changed", err=True)
        return EXIT_INVALID
    except UserError as exc:
        click.echo(f"agentjobs: error: {exc}", err=True)
        return EXIT_INVALID
    except click.exceptions.Abort:
        click.echo("agentjobs: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_INVALID
    except KeyboardInterrupt:
        click.echo("agentjobs: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS or not exc.filename:
            return _bug(args, exc)
        # a failure of the environment outside the store (a lock file, a log, --textfile):
        # the user's to fix, named by its path, not a bug (STYLE.md rule 5)
        click.echo(f"agentjobs: error: {environment_error(exc.filename, exc)}", err=True)
        return EXIT_INVALID
    except Exception as exc:
        return _bug(args, exc)
    return EXIT_OK


def _bug(args: Sequence[str], exc: BaseException) -> int:
    """An unexpected exception: a crash report and exit 70 (called inside `except`)."""
    state_dir = _state_location(None)
    for i, arg in enumerate(args):
        if arg == "--state-dir" and i + 1 < len(args):
            state_dir = args[i + 1]
        elif arg.startswith("--state-dir="):
            state_dir = arg.split("=", 1)[1]
    report = _crash_report(state_dir)
    click.echo(
        f"agentjobs: internal error (a bug, please report it): {exc!r}; details in {report}",
        err=True,
    )
    return EXIT_BUG
