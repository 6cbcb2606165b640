"""`agentjobs apply` of 10,000 job files into a fresh state directory, then again with nothing
changed, then `plan` (which must find nothing to do).

Target: the first apply (fresh state dir) <= 5 s (median).

    python bench/apply_10k.py [--jobs 10000] [--repeats 3]

Exit status: 0 when the target is met, 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    compare,
    ms,
    profile,
    run,
    summarize,
    time_once,
    verdict,
    workspace,
    write_jobs,
    write_results,
)

NAME = "apply_10k"
TARGET_SECONDS = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with workspace("apply") as root:
        jobs_dir = root / "jobs.d"
        start = time.perf_counter()
        write_jobs(jobs_dir, args.jobs)
        generated = time.perf_counter() - start
        print(f"generated {args.jobs} job files in {generated:.1f} s")

        def cli(state: Path, *verb: str) -> list[str]:
            return [
                *AGENTJOBS_MODULE,
                "--jobs-dir",
                str(jobs_dir),
                "--state-dir",
                str(state),
                *verb,
            ]

        # One untimed apply warms the page cache and __pycache__; then each timed first apply
        # gets a state directory of its own that does not exist yet.
        warm = root / "state-warmup"
        run(cli(warm, "apply"))
        shutil.rmtree(warm)
        first = []
        for n in range(args.repeats):
            state = root / f"state-{n}"
            first.append(time_once(cli(state, "apply")))
            if n < args.repeats - 1:
                shutil.rmtree(state)
        state = root / f"state-{args.repeats - 1}"

        applied = json.loads(run([*cli(state, "--output", "json", "status")]).stdout)
        if len(applied) != args.jobs:
            raise SystemExit(f"status lists {len(applied)} jobs after apply, not {args.jobs}")
        summary = run(cli(state, "apply")).stdout.strip().splitlines()[-1]
        if not summary.startswith("Applied: 0 to create, 0 to update, 0 to delete"):
            raise SystemExit(f"a second apply changed something: {summary}")

        # `plan` exits 0 when nothing would change (3 when something would): expect 0.
        again = compare(
            {
                "second apply (no changes)": cli(state, "apply"),
                "plan (no changes)": cli(state, "plan"),
                "status": cli(state, "status"),
                "validate (same files)": cli(state, "validate"),
            },
            repeats=args.repeats,
            warmup=0,
        )
        fresh = root / "state-profile"
        where_first = profile(["--jobs-dir", str(jobs_dir), "--state-dir", str(fresh), "apply"])
        where_again = profile(["--jobs-dir", str(jobs_dir), "--state-dir", str(fresh), "apply"])
        state_bytes = sum(p.stat().st_size for p in state.iterdir() if p.is_file())

    timings = {"first apply (fresh state dir)": summarize(first), **again}
    first_median = timings["first apply (fresh state dir)"]["median_s"]
    met = first_median <= TARGET_SECONDS
    print(f"{args.jobs} job files, median of {args.repeats} runs each")
    for name, t in timings.items():
        print(f"  {name:30} {ms(t['median_s']):>10}  (min {ms(t['min_s'])}, max {ms(t['max_s'])})")
    print(f"  per job, first apply: {ms(first_median / args.jobs)}")
    validating = timings["validate (same files)"]["median_s"]
    print(
        f"  of the first apply, loading and validating the files (= validate) is about "
        f"{validating / first_median:.0%}; planning and writing the state the rest"
    )
    print(f"  state directory after apply: {state_bytes / 1e6:.1f} MB")
    print(f"  target first apply <= {TARGET_SECONDS:g} s: {verdict(met)}")
    for title, where in (("first apply", where_first), ("second apply", where_again)):
        print(f"  {title}, top functions by cumulative time (cProfile, one run):")
        for row in where["by_cumulative"][:10]:
            print(f"    {row['cumtime_s']:7.3f} s  {row['function']}")

    path = write_results(
        NAME,
        {
            "jobs": args.jobs,
            "generate_files_s": generated,
            "state_bytes": state_bytes,
            "bytecode": BYTECODE_NOTE,
            "commands": {
                "first apply (fresh state dir)": "python -m agentjobs --jobs-dir D --state-dir S apply",
                "second apply (no changes)": "python -m agentjobs --jobs-dir D --state-dir S apply",
                "plan (no changes)": "python -m agentjobs --jobs-dir D --state-dir S plan",
                "status": "python -m agentjobs --jobs-dir D --state-dir S status",
                "validate (same files)": "python -m agentjobs --jobs-dir D validate",
            },
            "timings": timings,
            "target": f"first apply <= {TARGET_SECONDS:g} s",
            "target_met": met,
            "validate_share_of_first_apply": validating / first_median,
            "profile_first_apply": where_first,
            "profile_second_apply": where_again,
        },
    )
    print(f"results: {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
