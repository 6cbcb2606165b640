"""A `tick` with nothing due (10 applied jobs, cron schedules in the future) against
`python -c 'import yaml'`.

cron runs `agentjobs tick` every minute, so the tick that finds nothing to do is the hot path
(STYLE.md rule 14): it should compare the precomputed due times and import no schedule, schema,
YAML or logging machinery. Times the console script and `python -m agentjobs`, lists what
`python -X importtime -m agentjobs --state-dir S tick` imports that costs more than 5 ms
cumulative, and checks that none of jsonschema, croniter, tenacity, watchfiles, loguru or yaml is
imported (naming the agentjobs module that pulls each one in); profiles one tick with cProfile.
Target: each tick variant <= 2x `import yaml` (medians).

    python bench/tick_noop.py [--repeats 30] [--importtime-runs 7]

Exit status: 0 when the target is met and no forbidden module is imported, else 1.
"""

from __future__ import annotations

import argparse
import sys

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    PYTHON,
    apply_jobs,
    changed_files,
    compare,
    console_script,
    importtime_report,
    ms,
    print_importtime,
    print_profile,
    profile,
    run,
    snapshot,
    verdict,
    workspace,
    write_job_docs,
    write_results,
)

NAME = "tick_noop"
TARGET_RATIO = 2.0
FORBIDDEN = ("jsonschema", "croniter", "tenacity", "watchfiles", "loguru", "yaml")
TARGETED = ("agentjobs tick (console script)", "python -m agentjobs tick")
# Far enough ahead that no run of this benchmark reaches them; varied like real schedules.
CRONS = [
    "0 3 1 1 *",
    "30 4 2 2 *",
    "15 5 3 3 *",
    "45 6 4 4 *",
    "0 7 5 5 *",
    "0 8 6 6 *",
    "0 9 7 7 *",
    "0 10 8 8 *",
    "0 11 9 9 *",
    "0 12 10 10 *",
]


def jobs() -> list[dict[str, object]]:
    return [
        {
            "name": f"nightly-{i}",
            "command": ["true"],
            "lock": f"key-{i}",
            "schedule": {"cron": cron, "timezone": "UTC"},
        }
        for i, cron in enumerate(CRONS)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--importtime-runs", type=int, default=7)
    args = parser.parse_args()
    script = console_script()

    with workspace("tick-noop") as root:
        jobs_dir = root / "jobs.d"
        state = root / "state"
        write_job_docs(jobs_dir, jobs())
        summary = apply_jobs(jobs_dir, state)
        if not summary.startswith("Applied: 10 to create"):
            raise SystemExit(f"apply did not create the 10 jobs: {summary}")

        tick = ["--state-dir", str(state), "tick"]
        # Is it a no-op? It must run nothing and print nothing; note what it writes anyway.
        before = snapshot(state)
        shown = run([*AGENTJOBS_MODULE, *tick], cwd=root)
        written = changed_files(before, snapshot(state))
        if shown.stdout.strip() or (state / "records").exists():
            raise SystemExit(f"the tick was not a no-op; it printed:\n{shown.stdout}")

        commands = {
            "agentjobs tick (console script)": [script, *tick],
            "python -m agentjobs tick": [*AGENTJOBS_MODULE, *tick],
            "python -c 'import yaml'": [PYTHON, "-c", "import yaml"],
            "python -c pass": [PYTHON, "-c", "pass"],
        }
        timings = compare(commands, repeats=args.repeats, warmup=2, cwd=root)
        imports = importtime_report(
            [PYTHON, "-X", "importtime", "-m", "agentjobs", *tick],
            runs=args.importtime_runs,
            forbidden=FORBIDDEN,
            cwd=root,
        )
        runtime_after = (state / "runtime.json").stat().st_size
        where = profile(tick, top=15)

    baseline = timings["python -c 'import yaml'"]["median_s"]
    ratios = {name: t["median_s"] / baseline for name, t in timings.items()}
    met = all(ratios[name] <= TARGET_RATIO for name in TARGETED)
    fastest = timings["python -c 'import yaml'"]["min_s"]
    min_ratios = {name: t["min_s"] / fastest for name, t in timings.items()}
    clean = not imports["forbidden_imported"]

    print(f"10 applied jobs, nothing due; median of {args.repeats} runs each (after 2 warm-ups)")
    for name, t in timings.items():
        print(
            f"  {name:34} {ms(t['median_s']):>9}  (min {ms(t['min_s'])}, max {ms(t['max_s'])})"
            f"  {ratios[name]:.2f}x import yaml (mins: {min_ratios[name]:.2f}x)"
        )
    print(f"  target tick <= {TARGET_RATIO:g}x import yaml: {verdict(met)}")
    print(f"  files the no-op tick wrote: {', '.join(written) or 'none'}")
    print_importtime(imports)
    print(f"  no forbidden imports: {verdict(clean)}")
    print(f"  one tick under cProfile (imports included), {where['total_s']:.3f} s:")
    print_profile(where, 12)

    path = write_results(
        NAME,
        {
            "applied_jobs": 10,
            "schedules": CRONS,
            "bytecode": BYTECODE_NOTE,
            "console_script": script,
            "commands": {name: " ".join(argv) for name, argv in commands.items()},
            "timings": timings,
            "ratios_vs_import_yaml": ratios,
            "ratios_of_minimums_vs_import_yaml": min_ratios,
            "target_applies_to": list(TARGETED),
            "target": f"tick (nothing due) <= {TARGET_RATIO:g}x python -c 'import yaml'",
            "target_met": met,
            "files_written_by_noop_tick": written,
            "runtime_json_bytes": runtime_after,
            "importtime": imports,
            "no_forbidden_imports": clean,
            "profile": where,
        },
    )
    print(f"results: {path}")
    return 0 if met and clean else 1


if __name__ == "__main__":
    sys.exit(main())
