"""Throughput of the full path (claim, run, record): 1,000 runs of `true` with max_concurrent 2,
against a bare shell loop doing the same 1,000 times with `flock` and `echo >>`.

1,000 jobs, each `command: ["true"]` with its own lock key and `schedule: {every: 1h}`, are
applied (so all are due at once); then `agentjobs tick --max-concurrent 2` runs until every job
has run (one tick should do; more run in sequence if one stops early). Verified: 1,000
`attempt_finished` records with outcome `succeeded`. The baseline is
`for i in 1..1000: flock LOCK-i true; echo '{...}' >> records.jsonl` in bash.
Targets: >= 200 runs/s, and agentjobs <= 3x the shell loop's time (medians).
When a target is missed, one in-process `Engine(FileStore(S), max_concurrent=2).tick()` over a
fresh copy of the state runs under cProfile (worker threads included) to show where time goes.

    python bench/throughput.py [--runs 1000] [--repeats 3] [--profile]

Exit status: 0 when both targets are met, 1 when one is missed.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path
from typing import Any

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    apply_jobs,
    ms,
    print_profile,
    profile_engine_tick,
    read_records,
    summarize,
    time_once,
    verdict,
    workspace,
    write_job_docs,
    write_results,
)

NAME = "throughput"
TARGET_RUNS_PER_S = 200.0
TARGET_RATIO = 3.0
MAX_CONCURRENT = 2
SHELL_LOOP = r"""
set -eu
d=$1; n=$2
for i in $(seq 1 "$n"); do
    flock "$d/lock-$i" true
    echo "{\"event\":\"attempt_finished\",\"job\":\"job-$i\",\"outcome\":\"succeeded\"}" >> "$d/records.jsonl"
done
"""


def jobs(count: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"job-{i:04d}",
            "command": ["true"],
            "lock": f"key-{i:04d}",
            "schedule": {"every": "1h"},
            "workdir": "../work",
        }
        for i in range(count)
    ]


def check(state: Path, runs: int) -> dict[str, int]:
    """Every job ran exactly once and succeeded: count the records by event and outcome."""
    counts: collections.Counter[str] = collections.Counter()
    finished_jobs = set()
    for record in read_records(state):
        counts[record["event"]] += 1
        if record["event"] == "attempt_finished":
            counts[f"attempt_finished/{record['outcome']}"] += 1
            finished_jobs.add(record["job"])
    if counts["attempt_finished/succeeded"] != runs or len(finished_jobs) != runs:
        raise SystemExit(
            f"expected {runs} attempt_finished records with outcome succeeded, one per job; "
            f"got {dict(counts)} over {len(finished_jobs)} jobs"
        )
    return dict(counts)


def agentjobs_pass(template: Path, state: Path, runs: int, cwd: Path) -> dict[str, Any]:
    """Ticks in sequence over a fresh copy of the applied state until every job has run."""
    shutil.copytree(template, state)
    argv = [
        *AGENTJOBS_MODULE,
        "--state-dir",
        str(state),
        "tick",
        "--max-concurrent",
        str(MAX_CONCURRENT),
    ]
    ticks = []
    while True:
        ticks.append(time_once(argv, cwd=cwd))
        finished = sum(1 for r in read_records(state) if r["event"] == "attempt_finished")
        if finished >= runs or len(ticks) >= 20:
            break
    counts = check(state, runs)
    return {"seconds": sum(ticks), "ticks": len(ticks), "tick_seconds": ticks, "records": counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile even when targets are met")
    args = parser.parse_args()

    with workspace("throughput") as root:
        jobs_dir = root / "jobs.d"
        (root / "work").mkdir()
        write_job_docs(jobs_dir, jobs(args.runs))
        template = root / "state-applied"
        summary = apply_jobs(jobs_dir, template)
        if not summary.startswith(f"Applied: {args.runs} to create"):
            raise SystemExit(f"apply did not create the {args.runs} jobs: {summary}")

        shell_dir = root / "shell"
        shell_argv = ["bash", "-c", SHELL_LOOP, "shell-loop", str(shell_dir), str(args.runs)]

        def shell_pass() -> float:
            shutil.rmtree(shell_dir, ignore_errors=True)
            shell_dir.mkdir()
            seconds = time_once(shell_argv)
            lines = (shell_dir / "records.jsonl").read_text().count("\n")
            if lines != args.runs:
                raise SystemExit(f"the shell loop wrote {lines} lines, not {args.runs}")
            return seconds

        # warm-up: the page cache, bytecode, a first fork of everything
        shell_pass()
        passes, shell = [], []
        for n in range(args.repeats):  # interleaved, so load on the machine hits both alike
            passes.append(agentjobs_pass(template, root / f"state-{n}", args.runs, root))
            shutil.rmtree(root / f"state-{n}")
            shell.append(shell_pass())
            print(
                f"  pass {n + 1}: agentjobs {passes[-1]['seconds']:.2f} s in "
                f"{passes[-1]['ticks']} tick(s), shell loop {shell[-1]:.2f} s"
            )

        agentjobs_t = summarize([p["seconds"] for p in passes])
        shell_t = summarize(shell)
        runs_per_s = args.runs / agentjobs_t["median_s"]
        ratio = agentjobs_t["median_s"] / shell_t["median_s"]
        rate_met = runs_per_s >= TARGET_RUNS_PER_S
        ratio_met = ratio <= TARGET_RATIO

        where = None
        if args.profile or not (rate_met and ratio_met):
            state = root / "state-profile"
            shutil.copytree(template, state)
            where = profile_engine_tick(state, max_concurrent=MAX_CONCURRENT)
            check(state, args.runs)
            where["runtime_json_bytes_after"] = (state / "runtime.json").stat().st_size
        applied_bytes = (template / "applied.json").stat().st_size
        runtime_bytes = (template / "runtime.json").stat().st_size

    print(
        f"{args.runs} runs of `true`, max_concurrent {MAX_CONCURRENT}, median of {args.repeats} passes"
    )
    print(
        f"  agentjobs tick     {ms(agentjobs_t['median_s']):>10}  (min {ms(agentjobs_t['min_s'])}, "
        f"max {ms(agentjobs_t['max_s'])})  {runs_per_s:.0f} runs/s, "
        f"{ms(agentjobs_t['median_s'] / args.runs)} per run"
    )
    print(
        f"  shell loop         {ms(shell_t['median_s']):>10}  (min {ms(shell_t['min_s'])}, "
        f"max {ms(shell_t['max_s'])})  {args.runs / shell_t['median_s']:.0f} runs/s"
    )
    print(
        f"  target >= {TARGET_RUNS_PER_S:g} runs/s: {verdict(rate_met)} ({runs_per_s:.0f} runs/s)"
    )
    print(f"  target <= {TARGET_RATIO:g}x the shell loop: {verdict(ratio_met)} ({ratio:.1f}x)")
    print(
        f"  state before the tick: applied.json {applied_bytes / 1e3:.0f} kB, runtime.json {runtime_bytes / 1e3:.0f} kB"
    )
    if where is not None:
        print(
            f"  in-process Engine tick under cProfile: {where['wall_s_under_profiler']:.2f} s wall "
            f"for {where['attempts']} attempts"
        )
        print_profile(where, 20)

    path = write_results(
        NAME,
        {
            "runs": args.runs,
            "max_concurrent": MAX_CONCURRENT,
            "bytecode": BYTECODE_NOTE,
            "job": jobs(1)[0] | {"name": "job-NNNN", "lock": "key-NNNN"},
            "commands": {
                "agentjobs": f"python -m agentjobs --state-dir S tick --max-concurrent {MAX_CONCURRENT}"
                " (repeated until every job ran; over a fresh copy of the applied state each pass)",
                "shell loop": f"bash -c '{SHELL_LOOP.strip()}' shell-loop DIR {args.runs}",
            },
            "agentjobs_passes": passes,
            "timings": {"agentjobs": agentjobs_t, "shell loop": shell_t},
            "runs_per_s": runs_per_s,
            "ratio_vs_shell_loop": ratio,
            "state_bytes_before_tick": {
                "applied.json": applied_bytes,
                "runtime.json": runtime_bytes,
            },
            "target": f">= {TARGET_RUNS_PER_S:g} runs/s and <= {TARGET_RATIO:g}x the shell loop",
            "target_runs_per_s_met": rate_met,
            "target_ratio_met": ratio_met,
            "target_met": rate_met and ratio_met,
            "profile_in_process_tick": where,
        },
    )
    print(f"results: {path}")
    return 0 if rate_met and ratio_met else 1


if __name__ == "__main__":
    sys.exit(main())
