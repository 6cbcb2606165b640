"""Cold start of `agentjobs status` (10 applied jobs) against `python -c 'import yaml'`.

`status` and `tick` run from cron and shells many times a day, so their start-up is a hot path
(STYLE.md rule 14). Times both the console script and `python -m agentjobs`, and lists what
`python -X importtime -m agentjobs --state-dir S status` imports that costs more than 5 ms
cumulative; none of jsonschema, croniter, tenacity, watchfiles or yaml may be imported there.
Target: each status variant <= 2x `import yaml` (medians).

    python bench/cold_start.py [--repeats 40] [--importtime-runs 7]

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
    compare,
    console_script,
    importtime_report,
    ms,
    print_importtime,
    run,
    verdict,
    workspace,
    write_jobs,
    write_results,
)

NAME = "cold_start"
TARGET_RATIO = 2.0
REPORT_OVER_US = 5000
FORBIDDEN = ("jsonschema", "croniter", "tenacity", "watchfiles", "yaml")
UNCACHED = "python -m agentjobs status, no bytecode cache"
TARGETED = ("agentjobs status (console script)", "python -m agentjobs status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--importtime-runs", type=int, default=7)
    args = parser.parse_args()
    script = console_script()

    with workspace("cold") as root:
        jobs_dir = root / "jobs.d"
        state = root / "state"
        write_jobs(jobs_dir, 10)
        apply_jobs(jobs_dir, state)
        shown = run([*AGENTJOBS_MODULE, "--state-dir", str(state), "status"], cwd=root).stdout
        if len(shown.strip().splitlines()) != 11:  # a header and one row per job
            raise SystemExit(f"status does not list the 10 applied jobs:\n{shown}")

        commands = {
            "agentjobs status (console script)": [script, "--state-dir", str(state), "status"],
            "python -m agentjobs status": [
                *AGENTJOBS_MODULE,
                "--state-dir",
                str(state),
                "status",
            ],
            "python -c 'import yaml'": [PYTHON, "-c", "import yaml"],
            "python -c pass": [PYTHON, "-c", "pass"],
            # for reference: how this environment (PYTHONDONTWRITEBYTECODE=1, editable install)
            # runs it, compiling every agentjobs module on every start
            UNCACHED: [*AGENTJOBS_MODULE, "--state-dir", str(state), "status"],
        }
        timings = compare(commands, repeats=args.repeats, warmup=2, cwd=root, uncached={UNCACHED})
        imports = importtime_report(
            [
                PYTHON,
                "-X",
                "importtime",
                *AGENTJOBS_MODULE[1:],
                "--state-dir",
                str(state),
                "status",
            ],
            runs=args.importtime_runs,
            forbidden=FORBIDDEN,
            cwd=root,
            over_us=REPORT_OVER_US,
        )

    baseline = timings["python -c 'import yaml'"]["median_s"]
    ratios = {name: t["median_s"] / baseline for name, t in timings.items()}
    met = all(ratios[name] <= TARGET_RATIO for name in TARGETED)
    # less sensitive to other load on the machine than the medians; for reading, not the target
    fastest = timings["python -c 'import yaml'"]["min_s"]
    min_ratios = {name: t["min_s"] / fastest for name, t in timings.items()}
    clean = not imports["forbidden_imported"]

    print(f"10 applied jobs, median of {args.repeats} runs each (after 2 warm-up rounds)")
    for name, t in timings.items():
        print(
            f"  {name:46} {ms(t['median_s']):>9}  (min {ms(t['min_s'])}, max {ms(t['max_s'])})"
            f"  {ratios[name]:.2f}x import yaml (mins: {min_ratios[name]:.2f}x)"
        )
    print(f"  target status <= {TARGET_RATIO:g}x import yaml: {verdict(met)}")
    print_importtime(imports, REPORT_OVER_US)

    path = write_results(
        NAME,
        {
            "applied_jobs": 10,
            "bytecode": BYTECODE_NOTE + f"; except `{UNCACHED}` (not part of the target)",
            "console_script": script,
            "commands": {name: " ".join(argv) for name, argv in commands.items()},
            "timings": timings,
            "ratios_vs_import_yaml": ratios,
            "target_applies_to": list(TARGETED),
            "ratios_of_minimums_vs_import_yaml": min_ratios,
            "target": f"status <= {TARGET_RATIO:g}x python -c 'import yaml'",
            "target_met": met,
            "importtime": imports,
            "no_forbidden_imports": clean,
        },
    )
    print(f"results: {path}")
    return 0 if met and clean else 1


if __name__ == "__main__":
    sys.exit(main())
