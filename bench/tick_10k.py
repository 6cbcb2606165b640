"""A `tick` with nothing due over 10,000 applied jobs: the CLI and `Engine(FileStore(S)).tick()`.

The jobs are the varied ones `_common.write_jobs` generates (cron, `every`, `at`, manual, needs,
disabled ...), applied with `apply --now` a few years ahead; every tick runs as if ten seconds
before that apply (`tick --now`, `Clock(start=...)`), so each precomputed due time lies just ahead,
within what its schedule allows (a tick at the real time would see a clock four years behind the
state and bring every due time back: issue 10, item 5), and the tick has nothing to do. Checks that the tick ran and recorded nothing,
times it as a subprocess (`python -m agentjobs tick`) and in this process, breaks the in-process
time into the store reads and the `_has_work` scan, and profiles one in-process tick.
Target: one tick (CLI, median) <= 1 s.

    python bench/tick_10k.py [--jobs 10000] [--repeats 10]

Exit status: 0 when the target is met, 1 when it is missed.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    apply_jobs,
    changed_files,
    compare,
    console_script,
    ms,
    print_profile,
    profile_engine_tick,
    run,
    snapshot,
    summarize,
    verdict,
    workspace,
    write_jobs,
    write_results,
)

NAME = "tick_10k"
TARGET_SECONDS = 1.0
# Apply "at" this time: every job's first due time is after it (generated `at` times are
# 2031-2035; `every` jobs are due at the apply time itself).
APPLY_AT = "2030-06-01T00:00:30Z"
# Ticks run at this time: before every due time, and no due time is further ahead than its
# schedule allows (an `every: 90s` job is due 10 s after it plus jitter).
TICK_AT = "2030-06-01T00:00:20+00:00"


def in_process(state: Path, repeats: int) -> dict[str, Any]:
    """`Engine(FileStore(state)).tick()` in this process (modules already imported), and its parts."""
    from datetime import datetime

    from agentjobs.clock import Clock
    from agentjobs.engine import Engine
    from agentjobs.store.files import FileStore

    def clock() -> Clock:
        return Clock(start=datetime.fromisoformat(TICK_AT))

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    Engine(FileStore(state), clock=clock()).tick()  # warm: imports, page cache
    ticks, runtime_reads, applied_reads, scans = [], [], [], []
    for _ in range(repeats):
        ticks.append(timed(lambda: Engine(FileStore(state), clock=clock()).tick()))
        store = FileStore(state)
        engine = Engine(store, clock=clock())
        runtime_reads.append(timed(store.runtime))
        applied_reads.append(timed(store.applied))
        runtime = store.runtime()
        now = engine._now()
        scans.append(timed(functools.partial(engine._has_work, runtime, now)))

    # What-if, simulated here (agentjobs/ untouched): a runtime that remembers the applied
    # version it was reconciled with, so `_has_work` can say "nothing to do".
    class RemembersVersion(FileStore):
        def runtime(self) -> Any:
            current = super().runtime()
            current.applied_version = self.applied_version()
            return current

    what_if = []
    for _ in range(repeats):
        what_if.append(timed(lambda: Engine(RemembersVersion(state), clock=clock()).tick()))
    store = FileStore(state)
    runtime = store.runtime()
    has_work = Engine(store, clock=clock())._has_work(runtime, Engine(store, clock=clock())._now())
    # why `_has_work` says yes, if it does: the first condition that holds
    reason = None
    if has_work:
        if runtime.applied_version != store.applied_version():
            reason = (
                f"runtime.applied_version {runtime.applied_version!r} != "
                f"store.applied_version() {store.applied_version()!r}"
            )
        elif runtime.queue:
            reason = f"{len(runtime.queue)} queued items"
        else:
            reason = "a job is due, its needs are met, or a stored time is further ahead than "
            reason += "its schedule allows"
    return {
        "Engine(FileStore(S)).tick()": summarize(ticks),
        "FileStore.runtime()": summarize(runtime_reads),
        "FileStore.applied()": summarize(applied_reads),
        "Engine._has_work(runtime, now)": summarize(scans),
        "what-if: tick with runtime.applied_version kept": summarize(what_if),
        "has_work": has_work,
        "has_work_reason": reason,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    script = console_script()

    with workspace("tick-10k") as root:
        jobs_dir = root / "jobs.d"
        state = root / "state"
        start = time.perf_counter()
        write_jobs(jobs_dir, args.jobs)
        print(f"generated {args.jobs} job files in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        summary = apply_jobs(jobs_dir, state, now=APPLY_AT)
        print(f"applied in {time.perf_counter() - start:.1f} s: {summary}")

        tick = ["--state-dir", str(state), "tick", "--now", TICK_AT]
        before = snapshot(state)
        shown = run([*AGENTJOBS_MODULE, *tick], cwd=root)
        written = changed_files(before, snapshot(state))
        if shown.stdout.strip() or (state / "records").exists():
            raise SystemExit(f"the tick was not a no-op; it printed:\n{shown.stdout}")

        cli = compare(
            {
                "python -m agentjobs tick": [*AGENTJOBS_MODULE, *tick],
                "agentjobs tick (console script)": [script, *tick],
            },
            repeats=args.repeats,
            warmup=1,
            cwd=root,
        )
        inproc = in_process(state, args.repeats)
        where = profile_engine_tick(state, now=TICK_AT)
        state_bytes = {p.name: p.stat().st_size for p in state.iterdir() if p.is_file()}
        if changed_files(before, snapshot(state)) != written:
            written = changed_files(before, snapshot(state))

    median = cli["python -m agentjobs tick"]["median_s"]
    met = all(t["median_s"] <= TARGET_SECONDS for t in cli.values())
    print(f"{args.jobs} applied jobs, nothing due; median of {args.repeats} runs each")
    for name, t in cli.items():
        print(f"  {name:34} {ms(t['median_s']):>10}  (min {ms(t['min_s'])}, max {ms(t['max_s'])})")
    for name in (
        "Engine(FileStore(S)).tick()",
        "FileStore.runtime()",
        "FileStore.applied()",
        "Engine._has_work(runtime, now)",
        "what-if: tick with runtime.applied_version kept",
    ):
        t = inproc[name]
        print(f"  in process: {name:48} {ms(t['median_s']):>10}  (min {ms(t['min_s'])})")
    print(
        f"  _has_work says {inproc['has_work']}"
        + (f": {inproc['has_work_reason']}" if inproc["has_work"] else "")
    )
    print(f"  files the no-op tick wrote: {', '.join(written) or 'none'}")
    print(f"  state files: {', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in state_bytes.items())}")
    print(f"  target tick <= {TARGET_SECONDS:g} s: {verdict(met)} (python -m: {ms(median)})")
    print(f"  in-process tick under cProfile ({where['wall_s_under_profiler']:.3f} s wall):")
    print_profile(where, 12)

    path = write_results(
        NAME,
        {
            "jobs": args.jobs,
            "applied_with_now": APPLY_AT,
            "bytecode": BYTECODE_NOTE,
            "commands": {
                "python -m agentjobs tick": "python -m agentjobs --state-dir S tick",
                "agentjobs tick (console script)": "agentjobs --state-dir S tick",
            },
            "timings": cli,
            "in_process": inproc,
            "in_process_median_over_cli_median": statistics.median(
                inproc["Engine(FileStore(S)).tick()"]["samples_s"]
            )
            / median,
            "files_written_by_noop_tick": written,
            "state_bytes": state_bytes,
            "target": f"tick (nothing due, {args.jobs} jobs) <= {TARGET_SECONDS:g} s",
            "target_met": met,
            "profile_in_process_tick": where,
        },
    )
    print(f"results: {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
