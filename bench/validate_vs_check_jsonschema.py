"""`agentjobs validate` on 1,000 job files against `check-jsonschema` on the same files.

Both check every file against schema/job.schema.json; agentjobs also runs its semantic checks
(cron, time zones, durations, `needs` across files, ...), so it does strictly more work.
Target: agentjobs wall time <= 0.5x check-jsonschema's (medians).

    python bench/validate_vs_check_jsonschema.py [--files 1000] [--repeats 5]

Exit status: 0 when the target is met, 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    JOB_SCHEMA,
    compare,
    ms,
    profile,
    run,
    verdict,
    workspace,
    write_jobs,
    write_results,
)

NAME = "validate_vs_check_jsonschema"
TARGET_RATIO = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    checker = shutil.which("check-jsonschema")
    if checker is None:
        raise SystemExit("check-jsonschema is not installed: pip install -e '.[dev]'")

    with workspace("validate") as root:
        jobs_dir = root / "jobs.d"
        paths = write_jobs(jobs_dir, args.files)
        ours = [*AGENTJOBS_MODULE, "--jobs-dir", str(jobs_dir), "validate"]
        theirs = [checker, "--schemafile", str(JOB_SCHEMA), *map(str, paths)]

        # Both must accept the files, and agentjobs must find nothing at all to say about them.
        problems = json.loads(run([*ours[:-1], "--output", "json", "validate"]).stdout)
        if problems:
            raise SystemExit(f"agentjobs reported problems in generated files: {problems[:5]}")
        run(theirs)

        timings = compare(
            {"agentjobs validate": ours, "check-jsonschema": theirs}, repeats=args.repeats
        )
        where = profile(["--jobs-dir", str(jobs_dir), "validate"])

    a = timings["agentjobs validate"]["median_s"]
    b = timings["check-jsonschema"]["median_s"]
    ratio = a / b
    met = ratio <= TARGET_RATIO
    print(f"{args.files} job files, median of {args.repeats} runs each (after 1 warm-up)")
    for name, t in timings.items():
        print(f"  {name:20} {ms(t['median_s']):>10}  (min {ms(t['min_s'])}, max {ms(t['max_s'])})")
    print(f"  ratio agentjobs/check-jsonschema: {ratio:.2f}x (target <= {TARGET_RATIO}x)")
    print(f"  per file: agentjobs {ms(a / args.files)}, check-jsonschema {ms(b / args.files)}")
    print(f"  target {verdict(met)}")
    print("  agentjobs validate, top functions by cumulative time (cProfile, one run):")
    for row in where["by_cumulative"][:10]:
        print(f"    {row['cumtime_s']:7.3f} s  {row['function']}")

    path = write_results(
        NAME,
        {
            "files": args.files,
            "bytecode": BYTECODE_NOTE,
            "commands": {
                "agentjobs validate": "python -m agentjobs --jobs-dir DIR validate",
                "check-jsonschema": "check-jsonschema --schemafile schema/job.schema.json FILES",
            },
            "timings": timings,
            "ratio": ratio,
            "target": f"agentjobs <= {TARGET_RATIO}x check-jsonschema",
            "target_met": met,
            "profile_agentjobs_validate": where,
        },
    )
    print(f"results: {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
