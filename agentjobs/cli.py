"""The command line: thin click verbs that call one core function each and render the result.

Exit codes (DESIGN.md): 0 ok, 1 a job or check failed, 2 usage or invalid input, 3 `plan` found
changes, 130 Ctrl-C; an unexpected exception is a bug: a crash report goes into the state
directory and the exit code is 70 (EX_SOFTWARE), so it never looks like a plan with changes.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agentjobs import __version__
from agentjobs.errors import InvalidJobError, Problem, UserError

if TYPE_CHECKING:
    from agentjobs.reconcile import Plan
    from agentjobs.store import Store
    from agentjobs.validate import LoadResult

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CHANGES, EXIT_BUG = 0, 1, 2, 3, 70


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


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


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
    envvar="AGENTJOBS_STATE_DIR",
    default=".agentjobs",
    show_default=True,
    help="State directory.",
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
def cli(click_ctx: click.Context, jobs_dir: Path, state_dir: str, output: str) -> None:
    """Run unattended AI coding agent jobs declared in files."""
    click_ctx.obj = Context(jobs_dir=jobs_dir, state_dir=state_dir, output=output)


pass_ctx = click.make_pass_decorator(Context)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_ctx
def validate(ctx: Context, paths: tuple[Path, ...]) -> None:
    """Check job files (default: the jobs directory) and report every problem."""
    from agentjobs.spec import CONFIG_FILE_NAME
    from agentjobs.validate import load

    targets = list(paths) or [ctx.jobs_dir]
    if not paths and not ctx.jobs_dir.is_dir():
        raise UserError(f"jobs directory {ctx.jobs_dir} not found; pass files or --jobs-dir")
    config = ctx.jobs_dir / CONFIG_FILE_NAME if not paths else None
    if paths:
        # the config that applies to a file is the one beside it
        beside = {p.parent / CONFIG_FILE_NAME for p in paths if not p.is_dir()}
        beside |= {p / CONFIG_FILE_NAME for p in paths if p.is_dir()}
        config = next((c for c in sorted(beside) if c.is_file()), None)
    result = load(targets, config)
    if ctx.json:
        _emit_json([p.as_dict() for p in result.problems])
    else:
        _render_problems(result.problems)
        errors = len(result.errors)
        if errors:
            files = len({p.file for p in result.errors})
            click.echo(
                f"{errors} error{'s' * (errors != 1)} in {files} file{'s' * (files != 1)}", err=True
            )
        else:
            click.echo(f"ok: {len(result.jobs)} jobs in {result.files} files", err=True)
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


@cli.command()
@click.option("--prune", is_flag=True, help="Delete applied jobs whose file is gone.")
@click.option("--dry-run", is_flag=True, help="Show the plan, change nothing.")
@click.option(
    "--lock-timeout",
    type=float,
    envvar="AGENTJOBS_LOCK_TIMEOUT",
    default=30.0,
    show_default=True,
    help="Seconds to wait for another apply or tick.",
)
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


def _describe_schedule(schedule: dict[str, Any] | None) -> str:
    from agentjobs.spec import Schedule

    if not schedule:
        return "manual"
    return Schedule(**schedule).describe()


@cli.command()
@click.option("--now", "now_text", default=None, hidden=True)
@pass_ctx
def status(ctx: Context, now_text: str | None) -> None:
    """A table of applied jobs: schedule, next run, last run and result."""
    store = ctx.store()
    now = _now(now_text)
    applied = store.applied()
    states = store.runtime().jobs
    rows = []
    for name in sorted(applied):
        job = applied[name]
        state = states.get(name)
        stale = state is None or state.schedule_hash != job.schedule_hash
        next_due = None if stale or state is None else state.next_due
        enabled = job.spec.get("enabled", True)
        rows.append(
            {
                "job": name,
                "schedule": _describe_schedule(job.spec.get("schedule")),
                "enabled": enabled,
                "next": next_due if enabled else None,
                "last": None,
                "result": None,
                "lock": job.spec.get("lock"),
            }
        )
    if ctx.json:
        _emit_json(rows)
        return
    if not rows:
        click.echo(f"no jobs applied in {store.describe()}; run `agentjobs apply`")
        return
    table = [
        [
            r["job"],
            r["schedule"] + ("" if r["enabled"] else " (disabled)"),
            _when(r["next"]),
            _left(r["next"], now),
            _when(r["last"]),
            r["result"] or "-",
            str(r["lock"]),
        ]
        for r in rows
    ]
    click.echo(_table(["JOB", "SCHEDULE", "NEXT", "LEFT", "LAST", "RESULT", "LOCK"], table))


# -- entry point -----------------------------------------------------------------------------


def _crash_report(state_dir: str) -> str:
    import platform
    import tempfile

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    body = (
        f"agentjobs {__version__} crashed at {stamp}\n"
        f"python {platform.python_version()} on {platform.platform()}\n"
        f"argv: {sys.argv!r}\n\n{traceback.format_exc()}"
    )
    for folder in (Path(state_dir), Path(tempfile.gettempdir())):
        try:
            if folder.is_dir():
                path = folder / f"crash-{stamp}-{os.getpid()}.txt"
                path.write_text(body)
                return str(path)
        except OSError:
            continue
    return "(could not write a crash report)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (STYLE.md rule 3)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="agentjobs", standalone_mode=False)
    except Exit as exc:
        return exc.code
    except InvalidJobError as exc:
        _render_problems(exc.problems)
        errors = [p for p in exc.problems if p.severity == "error"]
        click.echo(
            f"agentjobs: {len(errors)} error(s) in the job files; nothing was changed", err=True
        )
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
    except Exception as exc:
        state_dir = os.environ.get("AGENTJOBS_STATE_DIR", ".agentjobs")
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
    return EXIT_OK
