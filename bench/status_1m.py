"""`agentjobs status` over a state directory holding 1,000,000 run records (10 applied jobs).

`status` shows each job's last run from the job states, so its cost must not grow with history.
The 10 jobs (`true`, `every: 1h`) are applied and run once by a real tick, so the state is what
agentjobs itself wrote; then 1,000,000 records of the same shape (`attempt_started` /
`attempt_finished` pairs, as engine.py and records.py write them) are generated straight into
`<state>/records/YYYY-MM-DD.jsonl`, spread over the preceding days. For reference (no target),
`history --limit 20` is timed once too: it reads the records.
Target: status (median) <= 0.2 s.

    python bench/status_1m.py [--records 1000000] [--days 730] [--repeats 20]

Exit status: 0 when the target is met, 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    PYTHON,
    apply_jobs,
    compare,
    console_script,
    ms,
    read_records,
    run,
    time_once,
    verdict,
    workspace,
    write_job_docs,
    write_results,
)

NAME = "status_1m"
TARGET_SECONDS = 0.2
JOBS = 10
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(moment: datetime) -> str:
    """A ULID for `moment` (records.new_ulid's layout: 48 bits of ms, 80 random bits)."""
    value = (int(moment.timestamp() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def write_history(state: Path, count: int, days: int, template: dict[str, Any]) -> dict[str, Any]:
    """`count` records (started/finished pairs) over the `days` days before the state's own
    records, copying every field of a real `attempt_finished` record (`template`)."""
    applied = json.loads((state / "applied.json").read_text())["jobs"]
    names = sorted(applied)
    records_dir = state / "records"
    first_real = min(p.stem for p in records_dir.glob("*.jsonl"))
    end = datetime.fromisoformat(first_real).replace(tzinfo=UTC)
    start = end - timedelta(days=days)
    pairs = count // 2
    per_day, extra = divmod(pairs, days)
    logs = template["log_path"].rsplit("/", 1)[0]
    written = 0
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for day in range(days):
        n = per_day + (1 if day < extra else 0)
        base = start + timedelta(days=day)
        lines = []
        for k in range(n):
            name = names[k % len(names)]
            slot = base + timedelta(seconds=(86400 * k) // max(n, 1))
            began = slot + timedelta(seconds=1)
            ended = began + timedelta(seconds=2 + k % 50)
            run_id = ulid(slot)
            common = {
                "run_id": run_id,
                "job": name,
                "attempt": 1,
                "trigger": "schedule",
                "slot": slot.isoformat(timespec="seconds"),
                "queued_at": slot.isoformat(timespec="seconds"),
                "lock_key": applied[name]["spec"]["lock"],
                "priority": "normal",
                "host": template["host"],
                "pid": 40000 + k % 20000,
                "spec_hash": applied[name]["spec_hash"],
                "git_commit": template["git_commit"],
                "corrective": False,
            }
            log_path = f"{logs}/{run_id}.1.log"
            started = {
                "event": "attempt_started",
                "time": began.isoformat(timespec="seconds"),
                **common,
                "started_at": began.isoformat(timespec="seconds"),
                "child_pid": 60000 + k % 5000,
                "log_path": log_path,
            }
            failed = k % 17 == 0
            finished = {
                "event": "attempt_finished",
                "time": ended.isoformat(timespec="seconds"),
                **common,
                "started_at": began.isoformat(timespec="seconds"),
                "finished_at": ended.isoformat(timespec="seconds"),
                "duration_s": float(2 + k % 50),
                "outcome": "failed" if failed else "succeeded",
                "exit_code": 1 if failed else 0,
                "signal": None,
                "error": None,
                "output_tail": "make: *** [test] Error 1\n" if failed else "ok\n",
                "log_path": log_path,
                "next": "done",
                "next_attempt_at": None,
                "reason": "not retried" if failed else "succeeded",
            }
            if set(finished) != set(template):
                raise SystemExit(
                    "generated records differ in shape from engine.py's: "
                    f"{sorted(set(finished) ^ set(template))}"
                )
            lines.append(encode(started))
            lines.append(encode(finished))
        path = records_dir / f"{base:%Y-%m-%d}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        written += len(lines)
    files = sorted(records_dir.glob("*.jsonl"))
    return {
        "records_generated": written,
        "days": days,
        "first_day": f"{start:%Y-%m-%d}",
        "last_generated_day": f"{end - timedelta(days=1):%Y-%m-%d}",
        "day_files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    script = console_script()

    with workspace("status-1m") as root:
        jobs_dir = root / "jobs.d"
        state = root / "state"
        (root / "work").mkdir()
        write_job_docs(
            jobs_dir,
            [
                {
                    "name": f"job-{i}",
                    "command": ["true"],
                    "lock": f"key-{i}",
                    "schedule": {"every": "1h"},
                    "workdir": "../work",
                }
                for i in range(JOBS)
            ],
        )
        apply_jobs(jobs_dir, state)
        run([*AGENTJOBS_MODULE, "--state-dir", str(state), "tick"], cwd=root)
        real = read_records(state)
        finished = [r for r in real if r["event"] == "attempt_finished"]
        if len(finished) != JOBS:
            raise SystemExit(f"the first tick finished {len(finished)} attempts, not {JOBS}")
        start = time.perf_counter()
        history = write_history(state, args.records, args.days, finished[0])
        history["generate_s"] = time.perf_counter() - start
        history["records_total"] = history["records_generated"] + len(real)
        print(
            f"generated {history['records_generated']} records "
            f"({history['bytes'] / 1e6:.0f} MB in {history['day_files']} day files) "
            f"in {history['generate_s']:.1f} s"
        )

        status = ["--state-dir", str(state), "status"]
        shown = run([*AGENTJOBS_MODULE, *status], cwd=root).stdout.strip().splitlines()
        if len(shown) != JOBS + 1 or not all("succeeded" in line for line in shown[1:]):
            raise SystemExit(
                "status does not list the 10 jobs with their last result:\n" + "\n".join(shown)
            )

        commands = {
            "agentjobs status (console script)": [script, *status],
            "python -m agentjobs status": [*AGENTJOBS_MODULE, *status],
            "python -c 'import yaml'": [PYTHON, "-c", "import yaml"],
        }
        timings = compare(commands, repeats=args.repeats, warmup=2, cwd=root)
        history_argv = [*AGENTJOBS_MODULE, "--state-dir", str(state), "history", "--limit", "20"]
        history_s = time_once(history_argv, cwd=root)

    met = all(timings[n]["median_s"] <= TARGET_SECONDS for n in commands if "status" in n)
    print(
        f"{JOBS} applied jobs, {history['records_total']} run records on disk; "
        f"median of {args.repeats} runs each"
    )
    for name, t in timings.items():
        print(f"  {name:36} {ms(t['median_s']):>9}  (min {ms(t['min_s'])}, max {ms(t['max_s'])})")
    print(f"  for reference, one `history --limit 20`: {ms(history_s)}")
    print(f"  target status <= {TARGET_SECONDS:g} s: {verdict(met)}")

    path = write_results(
        NAME,
        {
            "applied_jobs": JOBS,
            "records": history,
            "bytecode": BYTECODE_NOTE,
            "commands": {
                "agentjobs status (console script)": "agentjobs --state-dir S status",
                "python -m agentjobs status": "python -m agentjobs --state-dir S status",
                "python -c 'import yaml'": "python -c 'import yaml' (for scale)",
                "history (one run, no target)": "python -m agentjobs --state-dir S history --limit 20",
            },
            "timings": timings,
            "history_limit_20_s": history_s,
            "target": f"status <= {TARGET_SECONDS:g} s with {history['records_total']} records",
            "target_met": met,
        },
    )
    print(f"results: {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
