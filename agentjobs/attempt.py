"""One attempt of a job: build its command and environment, run it, verify it, judge it."""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentjobs import landing
from agentjobs.errors import UserError
from agentjobs.runner import AnyStop, Ending, ProcessResult, Redactor, StopFlag, run_process
from agentjobs.spec import AgentSpec, JobSpec
from agentjobs.store import AppliedJob, QueueItem

if TYPE_CHECKING:
    from agentjobs.agents import Verdict
    from agentjobs.pricing import Price
    from agentjobs.progress import Reporter

HoldKey = Callable[[str, str, float], Callable[[], None] | None]  # Store.hold_key
LAND_WAIT_S = 300.0  # how long a merge-mode landing waits for the workdir's lock key
LAND_LEASE_S = 600.0  # how long its hold lasts on a shared store unless released
NO_CHANGE_ERROR = "no change: the run succeeded but left no commit and no diff (expect.changes)"
MATCH_BYTES = 65536  # how much of the log `never_on`/`retry_on` output patterns search
MISSING_CLI_ADVICE = (
    "check the PATH the job runs with (set PATH in its `env` or the crontab) "
    "or run `agentjobs doctor`"
)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    outcome: str  # retry.Outcome value
    exit_code: int | None
    signal: str | None
    error: str | None
    output_tail: str
    duration_s: float
    output_for_match: str
    agent: dict[str, Any] | None = None  # the agent's facts for the run record
    land: dict[str, Any] | None = None  # what became of the run's branch (`land`, _worktree_end)
    permanent: bool = False  # the agent's output says a retry cannot fix it
    reset_at: datetime | None = None  # a usage limit lifts then


def command_for(spec: JobSpec, item: QueueItem) -> list[str]:
    """The attempt's argv. An agent's prompt grows a corrective section on a corrective retry
    (the previous attempt's outcome and output); claude with `retry.resume` continues that
    attempt's session instead."""
    if spec.agent is not None:
        from agentjobs.agents import build_argv, corrective_section, prompt_text

        prompt = prompt_text(spec.agent)
        resume = None
        last = item.history[-1] if item.history else None
        if item.corrective and last is not None:
            if spec.retry.resume and last.agent and last.agent.get("session_id"):
                resume = str(last.agent["session_id"])
            output = _tail_of(Path(last.log_path), 8192) if last.log_path else last.output_tail
            prompt += corrective_section(
                spec.retry.corrective_template,
                last.attempt,
                last.outcome,
                last.error,
                output or last.output_tail,
            )
        if item.review is not None:
            from agentjobs.review import guidance_section

            prompt += guidance_section(item.review)
        return build_argv(spec.agent, prompt, resume)
    if spec.shell is not None:
        return ["/bin/sh", "-c", spec.shell]
    return list(spec.command)


def _tail_of(path: Path, size: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            end = handle.tell()
            handle.seek(max(0, end - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_attempt(
    applied: AppliedJob,
    item: QueueItem,
    *,
    log_path: Path,
    stop: StopFlag,
    on_start: Callable[[int], None] | None = None,
    on_output: Callable[[bytes], None] | None = None,
    slot_env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    worktrees: Path | None = None,
    prices: Mapping[str, Price] | None = None,
    cap_usd: float | None = None,
    agent: AgentSpec | None = None,
    progress: Reporter | None = None,
    hold_key: HoldKey | None = None,
) -> AttemptOutcome:
    """Run one attempt of `applied` to its end. `agent` runs instead of the job's own (a
    fallback); `cap_usd` is what the attempt may spend: claude is told (`--max-budget-usd`),
    any other agent is stopped (outcome `budget`) once its streamed usage costs more.
    `progress` is told what the output says while it streams (progress.py); its report file
    is the attempt's `AGENTJOBS_PROGRESS`. `hold_key` holds the workdir's lock key while a
    `land: {mode: merge}` run lands (`Store.hold_key`)."""
    from agentjobs.environment import secret_values

    spec, cap_usd = _capped(applied.parsed, agent, cap_usd)
    watch = None
    if spec.agent is not None or progress is not None:
        watch = _Watch(spec, prices or {}, cap_usd, on_output, progress)
        on_output, stop = watch.output, watch.stopping(stop)
    if progress is not None and progress.file is not None:
        from agentjobs.progress import ENV

        slot_env = {**(slot_env or {}), ENV: str(progress.file)}
    try:
        argv, cwd, env = _command(spec, item, slot_env, worktrees)
    except UserError as exc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"[agentjobs] {exc}\n")
        return AttemptOutcome("failed", None, None, str(exc), str(exc), 0.0, str(exc))
    secrets = secret_values(env, spec.secrets)
    # `expect.changes` without a worktree: what the workdir looked like before
    before = landing.snapshot(cwd) if spec.expect_changes and spec.isolation != "worktree" else None
    if progress is not None:
        progress.redact = Redactor(secrets).text  # what a command writes to its report file
    run = _runner(spec, cwd, env, log_path, secrets, pass_fds, stop, on_output)
    result = run(
        argv, timeout=spec.timeout, silence_timeout=spec.silence_timeout, on_start=on_start
    )
    outcome, error, verdict, permanent = _judged(spec, result, log_path, watch)
    duration, tail = result.duration_s, result.output_tail
    if outcome == "succeeded" and spec.verify is not None:
        outcome, error, spent = _verified(spec, run, log_path)
        duration += spent
        tail = _tail_of(log_path, 4096)
    facts = dict(verdict.facts) if verdict is not None and verdict.facts else None
    if watch is not None and watch.meter is not None:  # usage and cost from the stream
        facts = {**(facts or {}), **watch.facts()}
    land = None
    if spec.isolation == "worktree" and worktrees is not None:
        outcome, error, isolated, land = _worktree_end(
            spec, item, outcome, error, worktrees, hold_key, stop
        )
        facts = {**(facts or {}), "worktree": isolated}
    elif outcome == "succeeded" and spec.expect_changes:
        outcome, error = _changed_workdir(cwd, before)
    redactor = Redactor(secrets)
    return AttemptOutcome(
        agent=facts,
        land=land,
        permanent=permanent,
        reset_at=verdict.reset_at if verdict is not None else None,
        outcome=outcome,
        exit_code=result.exit_code,
        signal=result.signal,
        error=redactor.text(error) if error else None,
        output_tail=tail,
        duration_s=round(duration, 3),
        output_for_match=_for_match(spec, outcome, log_path, tail),
    )


def _runner(
    spec: JobSpec,
    cwd: str,
    env: dict[str, str],
    log_path: Path,
    secrets: Sequence[str],
    pass_fds: Sequence[int],
    stop: StopFlag,
    on_output: Callable[[bytes], None] | None,
) -> Callable[..., ProcessResult]:
    """`run_process` for the attempt's command and its verify: where, with what, under which
    limits (each call adds its argv and timeouts)."""
    return functools.partial(
        run_process,
        cwd=cwd,
        env=env,
        log_path=log_path,
        kill_grace=spec.kill_grace,
        secrets=secrets,
        pass_fds=pass_fds,
        max_log_size=spec.max_log_size,
        stop=stop,
        on_output=on_output,
    )


def _capped(
    spec: JobSpec, agent: AgentSpec | None, cap_usd: float | None
) -> tuple[JobSpec, float | None]:
    """The spec as this attempt runs it (a fallback `agent`), and what is left of `cap_usd`
    for its supervisor to enforce: claude is told its cap (`--max-budget-usd`) and stops
    itself."""
    if agent is not None:
        spec = dataclasses.replace(spec, agent=agent)
    if cap_usd is not None and spec.agent is not None and spec.agent.kind == "claude":
        own = spec.agent.max_budget_usd
        capped = cap_usd if own is None else min(own, cap_usd)
        spec = dataclasses.replace(
            spec, agent=dataclasses.replace(spec.agent, max_budget_usd=round(capped, 4))
        )
        cap_usd = None
    return spec, cap_usd


def _changed_workdir(cwd: str, before: tuple[str, str] | None) -> tuple[str, str | None]:
    """`expect.changes` without a worktree: `succeeded` when HEAD or the status of `cwd`
    differ from `before` (taken as the attempt started), else `no_change`."""
    after = landing.snapshot(cwd)
    if before is None or after is None:
        return "no_change", f"expect.changes: {cwd} is not a git repository"
    return ("no_change", NO_CHANGE_ERROR) if after == before else ("succeeded", None)


def _for_match(spec: JobSpec, outcome: str, log_path: Path, tail: str) -> str:
    """What `retry_on`/`never_on` output patterns search: the last 64 KiB of the log, read
    only when one will look."""
    patterns = any(m.output for m in (*spec.retry.never_on, *spec.retry.retry_on))
    return _tail_of(log_path, MATCH_BYTES) if outcome != "succeeded" and patterns else tail


class _Watch:
    """What an attempt's output says as it streams, from one pass over its lines: an agent's
    usage and cost (`pricing.Meter`), with the flag that stops it when the cost passes `cap`
    (USD), and its turns and tool call in flight (`progress.Activity`); a command's
    `::progress` lines. What changes goes to the attempt's `progress`."""

    def __init__(
        self,
        spec: JobSpec,
        prices: Mapping[str, Price],
        cap: float | None,
        then: Callable[[bytes], None] | None,
        progress: Reporter | None,
    ) -> None:
        from agentjobs.pricing import Meter, price_table, stream_event
        from agentjobs.progress import PREFIX, Activity

        self.event_of, self.prefix = stream_event, PREFIX.encode()
        self.meter = Meter(spec.agent.kind, spec.agent.model) if spec.agent is not None else None
        self.activity = Activity(spec.agent.kind) if spec.agent is not None else None
        self.prices = prices or price_table(None)
        self.cap, self.then, self.progress = cap, then, progress
        self.over = threading.Event()
        self.partial = b""

    def output(self, chunk: bytes) -> None:
        if self.then is not None:
            self.then(chunk)
        if self.progress is not None:
            self.progress.output()
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        whole, rest = data[:cut], data[cut:]
        if self.meter is None:
            # a command: only a line's start matters, and most output has no report at all
            self.partial = rest[:4096]
            if self.prefix not in whole:
                return
        else:
            self.partial = rest[-1_048_576:]  # a line longer than 1 MiB is no event
        for line in whole.split(b"\n")[:-1]:
            self._line(line.decode("utf-8", errors="replace"))

    def _line(self, line: str) -> None:
        if self.meter is None:  # a command: its progress lines
            if self.progress is not None:
                self.progress.line(line)
            return
        event = self.event_of(line)
        if event is None:
            return
        costs = self.meter.feed(event)
        moved = self.activity is not None and self.activity.feed(event)
        if costs and self.cap is not None and not self.over.is_set():
            cost = self.meter.cost(self.prices)
            if cost is not None and cost[0] > self.cap:
                self.over.set()
        if self.progress is not None and (costs or moved):
            changes: dict[str, Any] = {}
            if moved and self.activity is not None:
                changes.update(turns=self.activity.turns or None, tool=self.activity.tool)
            cost = self.meter.cost(self.prices) if costs else None
            if cost is not None:
                changes.update(cost_usd=cost[0], cost_estimated=cost[1])
            self.progress.update(**changes)

    def stopping(self, stop: StopFlag) -> StopFlag:
        """`stop`, or with a cap to enforce, `stop` or the cap passed."""
        if self.meter is None:
            return stop
        return AnyStop(
            (stop, lambda: getattr(stop, "reason", "") or "stopped by shutdown"),
            (self.over, self.why),
        )

    def why(self) -> str:
        cost = self.meter.cost(self.prices) if self.meter is not None else None
        spent = f"${cost[0]:.4f}" if cost else "?"
        return f"budget: the attempt spent {spent}, more than its cap ${self.cap or 0:.4f}"

    def facts(self) -> dict[str, Any]:
        assert self.meter is not None
        if self.partial:
            self._line(self.partial.decode("utf-8", errors="replace"))
            self.partial = b""
        return self.meter.facts(self.prices)


def _worktree_end(
    spec: JobSpec,
    item: QueueItem,
    outcome: str,
    error: str | None,
    worktrees: Path,
    hold_key: HoldKey | None,
    stop: StopFlag,
) -> tuple[str, str | None, dict[str, Any], dict[str, Any] | None]:
    """The end of a run in its own worktree: a success that changed nothing is `no_change`
    (`expect.changes`); a success's changes are committed on its branch (worktree.finish),
    then landed by `land` (_merged). (outcome, error, worktree facts, land facts)"""
    from agentjobs import worktree

    if outcome == "succeeded" and spec.expect_changes:
        path = worktrees / f"{spec.name}-{item.run_id}"
        base, _ = worktree.started(worktrees, spec.name, item.run_id)
        now = landing.snapshot(str(path)) if path.is_dir() else None
        if now is None or (now[0] == base and not now[1]):
            outcome, error = "no_change", NO_CHANGE_ERROR
    try:
        isolated = worktree.finish(worktrees, spec.name, item.run_id, outcome == "succeeded")
    except UserError as exc:
        return outcome, error, {"error": str(exc)}, None
    mode = spec.land.mode if spec.land is not None else "branch"
    if outcome != "succeeded" or mode == "branch" or spec.land is None:
        return outcome, error, isolated, None
    land: dict[str, Any] = {
        "mode": mode,
        "into": spec.land.into or isolated.get("from_branch"),
        "strategy": spec.land.strategy,
        "branch": isolated["branch"],
        "base": isolated.get("base"),
        "commit": isolated.get("commit"),
        "diffstat": worktree.diffstat(isolated, spec.workdir),
    }
    if not land["commit"]:
        land["nothing"] = "the run changed nothing: nothing to land"
        return outcome, error, isolated, land
    if not land["into"]:
        land["conflict"] = f"{spec.workdir} was on no branch: set `land.into`"
    elif mode == "merge":
        land.update(_merged(spec, item, land, worktrees, hold_key, stop))
    if mode == "review" or land.get("conflict"):
        return "awaiting_review", land.get("conflict"), isolated, land
    return outcome, error, isolated, land


def _merged(
    spec: JobSpec,
    item: QueueItem,
    land: Mapping[str, Any],
    worktrees: Path,
    hold_key: HoldKey | None,
    stop: StopFlag,
) -> dict[str, Any]:
    """`land: {mode: merge}`: land the run's branch under the workdir's lock key (waiting up
    to LAND_WAIT_S for it); {"merged": commit} or {"conflict": why} for the review inbox."""
    import time

    release = None
    deadline = time.monotonic() + LAND_WAIT_S
    while hold_key is not None:
        release = hold_key(spec.lock, f"landing of run {item.run_id}", LAND_LEASE_S)
        if release is not None or time.monotonic() >= deadline or stop.is_set():
            break
        time.sleep(1.0)
    if hold_key is not None and release is None:
        return {"conflict": f"lock key {spec.lock} stayed busy: land it with review approve"}
    try:
        landed = landing.land(
            spec.workdir,
            worktrees,
            run_id=item.run_id,
            base=str(land["base"]),
            commit=str(land["commit"]),
            into=str(land["into"]),
            strategy=str(land["strategy"]),
            message=landing.message(spec.name, item.run_id, land, "agentjobs (land: merge)"),
        )
    except UserError as exc:
        return {"conflict": str(exc)}
    finally:
        if release is not None:
            release()
    if landed.conflict is not None:
        return {"conflict": landed.conflict}
    return {"merged": landed.commit, "by": "agentjobs (land: merge)"}


def _command(
    spec: JobSpec, item: QueueItem, slot_env: Mapping[str, str] | None, worktrees: Path | None
) -> tuple[list[str], str, dict[str, str]]:
    """The attempt's argv, working directory and environment (a worktree of its own with
    `isolation: worktree`); UserError when one of them cannot be had."""
    from agentjobs.environment import build_env

    extra = {
        "AGENTJOBS_JOB": spec.name,
        "AGENTJOBS_RUN_ID": item.run_id,
        "AGENTJOBS_ATTEMPT": str(item.attempt),
        "AGENTJOBS_TRIGGER": item.trigger,
        "AGENTJOBS_HOST": item.host or "",  # the runner host that claimed it
        # a reviewer's `review retry --guidance` (a command reads it here, an agent's prompt
        # carries it)
        **(
            {
                "AGENTJOBS_GUIDANCE": str(item.review.get("guidance") or ""),
                "AGENTJOBS_REVIEW_OF": str(item.review.get("of") or ""),
            }
            if item.review
            else {}
        ),
        **(slot_env or {}),
    }
    if spec.agent is not None:
        from agentjobs.agents import agent_env

        extra.update(agent_env(spec.agent))
    env = build_env(dict(spec.env), spec.env_file, extra)
    argv = command_for(spec, item)
    cwd = spec.workdir
    if spec.isolation == "worktree" and worktrees is not None:
        from agentjobs import worktree

        cwd = str(worktree.prepare(spec.workdir, worktrees, spec.name, item.run_id))
    return argv, cwd, env


def _exit_outcome(result: ProcessResult) -> tuple[str, str | None]:
    """The outcome the process's ending says, and its error."""
    ended = {
        Ending.TIMEOUT: "timeout",
        Ending.SILENCE: "silence",
        Ending.INTERRUPTED: "interrupted",
        Ending.NOT_STARTED: "failed",
    }.get(result.ending)
    if ended is not None:
        return ended, result.error
    if result.exit_code == 0:
        return "succeeded", result.error
    if result.exit_code is not None:
        return "failed", f"exit code {result.exit_code}"
    return "failed", f"killed by {result.signal}"


def _judged(
    spec: JobSpec, result: ProcessResult, log_path: Path, watch: _Watch | None
) -> tuple[str, str | None, Verdict | None, bool]:
    """The outcome the process's ending says, with the agent's own verdict beating its exit
    code (is_error with exit 0, usage limits, hollow sessions) and a passed cap beating both
    (`budget`); and whether a retry cannot fix it: the agent said so, the cap was passed, or
    the agent's CLI is missing (a retry finds it missing too; the error says where to look)."""
    outcome, error = _exit_outcome(result)
    missing = spec.agent is not None and result.ending == Ending.NOT_STARTED
    if missing:
        error = f"{error}; {MISSING_CLI_ADVICE}"
    verdict = None
    if spec.agent is not None and result.ending == Ending.EXITED:
        outcome, error, verdict = _verdict(spec, result, log_path, outcome, error)
    over_budget = watch is not None and watch.over.is_set()
    if over_budget:
        assert watch is not None
        outcome, error = "budget", watch.why()
    permanent = over_budget or missing or (verdict.permanent if verdict is not None else False)
    return outcome, error, verdict, permanent


def _verdict(
    spec: JobSpec, result: ProcessResult, log_path: Path, outcome: str, error: str | None
) -> tuple[str, str | None, Verdict]:
    """The agent's own verdict beats its exit code."""
    from agentjobs.agents import JUDGED_BYTES, preset

    assert spec.agent is not None
    verdict = preset(spec.agent.kind).judge(
        _tail_of(log_path, JUDGED_BYTES), result.exit_code, spec.agent, datetime.now(UTC)
    )
    if verdict.outcome is not None and verdict.outcome != outcome:
        outcome = verdict.outcome
        error = verdict.error if outcome != "succeeded" else None
    elif verdict.error and outcome != "succeeded":
        error = verdict.error
    return outcome, error, verdict


def _verified(
    spec: JobSpec, run: Callable[..., ProcessResult], log_path: Path
) -> tuple[str, str | None, float]:
    """`verify` after a success: the attempt succeeds only if it passes."""
    assert spec.verify is not None
    with open(log_path, "ab") as log:
        log.write(b"\n[agentjobs] verify\n")
    verify_argv = (
        ["/bin/sh", "-c", spec.verify.shell]
        if spec.verify.shell is not None
        else list(spec.verify.argv)
    )
    check = run(verify_argv, timeout=spec.verify.timeout, silence_timeout=None)
    if check.ending == Ending.INTERRUPTED:
        return "interrupted", check.error, check.duration_s
    if check.ending != Ending.EXITED or check.exit_code != 0:
        how = check.error or (
            f"exit code {check.exit_code}"
            if check.exit_code is not None
            else f"killed by {check.signal}"
        )
        error = f"verify {' '.join(verify_argv)} failed ({how}): {check.output_tail[-500:]}"
        return "verify_failed", error, check.duration_s
    return "succeeded", None, check.duration_s
