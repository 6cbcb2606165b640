"""`agentjobs daemon` as a real subprocess: how late a due job starts, and whether its memory grows.

1. Latency. With the daemon running, `apply` jobs with one-off slots (`schedule: {at: ...}`, whole
   seconds, one second apart, a few seconds ahead) whose command is
   `sh -c 'date +%s.%N > FILE'`; each job's start is the time `date` wrote, its lateness that
   minus its slot (so the fork/exec of `sh` and `date` is charged to the daemon too).
   Target: every job starts within 100 ms of its slot.
2. Memory. Apply N trivial jobs (`command: [true]`, `schedule: {every: 1s}`, each on its own lock
   key) and let the daemon run them again and again; sample its VmRSS (/proc/PID/status) when the
   records first hold 100 `attempt_finished` lines and when they hold 10,000.
   Target: RSS(10,000 runs) within 10% of RSS(100 runs). The run is bounded (--max-seconds): if
   10,000 runs are not reached in time, the largest count reached and the ratio there are reported.

At the end the daemon is stopped with SIGTERM and must exit 0.

    python bench/daemon.py [--slots 10] [--jobs 150] [--runs 10000] [--max-seconds 180]

Exit status: 0 when both targets are met (memory at the full run count) and the daemons exited 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    BYTECODE_NOTE,
    RecordCounter,
    apply_jobs,
    daemon_process,
    ms,
    read_records,
    rss_kib,
    stop_daemon,
    verdict,
    workspace,
    write_job_docs,
    write_results,
)

NAME = "daemon"
LATENCY_TARGET_S = 0.100
RSS_TARGET_RATIO = 1.10
FIRST_AT = 100


def latency(root: Path, slots: int) -> dict[str, Any]:
    jobs_dir, state, out = root / "jobs.d", root / "state", root / "out"
    out.mkdir()
    # one job far ahead, so the state exists and the daemon starts with something to plan
    idle = {"name": "idle", "command": ["true"], "schedule": {"cron": "0 3 1 1 *"}}
    write_job_docs(jobs_dir, [idle])
    apply_jobs(jobs_dir, state)
    with daemon_process(state, cwd=root) as proc:
        time.sleep(1.0)  # let it settle into its sleep
        # slots on whole seconds, the first at least 3 s ahead (apply takes a few hundred ms)
        first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
        slot_times = [first + timedelta(seconds=i) for i in range(slots)]
        docs = [
            {
                "name": f"at-{i:02d}",
                "command": ["sh", "-c", f"date +%s.%N > {out / f'at-{i:02d}'}"],
                "lock": f"key-{i}",
                "schedule": {"at": slot.strftime("%Y-%m-%dT%H:%M:%S"), "timezone": "UTC"},
            }
            for i, slot in enumerate(slot_times)
        ]
        write_job_docs(jobs_dir, [idle, *docs])
        applied_at = time.time()
        summary = apply_jobs(jobs_dir, state)
        apply_s = time.time() - applied_at
        deadline = slot_times[-1].timestamp() + 10
        while time.time() < deadline:
            if all((out / f"at-{i:02d}").is_file() for i in range(slots)):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        stopped = stop_daemon(proc)
    lateness = []
    for i, slot in enumerate(slot_times):
        path = out / f"at-{i:02d}"
        if not path.is_file() or not path.read_text().strip():
            raise SystemExit(
                f"job at-{i:02d} never ran; daemon said:\n{(root / 'daemon.stderr').read_text()}"
            )
        lateness.append(float(path.read_text()) - slot.timestamp())
    met = all(0 <= late <= LATENCY_TARGET_S for late in lateness)
    return {
        "slots": slots,
        "slot_spacing_s": 1,
        "first_slot_after_apply_s": first.timestamp() - applied_at,
        "apply_summary": summary,
        "apply_s": apply_s,
        "job_command": "sh -c 'date +%s.%N > FILE'",
        "lateness_s": lateness,
        "median_s": statistics.median(lateness),
        "min_s": min(lateness),
        "max_s": max(lateness),
        "target": f"every job starts within {LATENCY_TARGET_S * 1000:g} ms of its slot",
        "target_met": met,
        "daemon_stop": stopped,
    }


def memory(root: Path, jobs: int, runs: int, max_seconds: float) -> dict[str, Any]:
    jobs_dir, state = root / "jobs.d", root / "state"
    docs = [
        {
            "name": f"tiny-{i:04d}",
            "command": ["true"],
            "lock": f"key-{i}",
            "schedule": {"every": "1s"},
        }
        for i in range(jobs)
    ]
    write_job_docs(jobs_dir, docs)
    apply_jobs(jobs_dir, state)
    counter = RecordCounter(state)
    checkpoints = sorted({FIRST_AT, 1000, *range(2000, runs + 1, 2000), runs})
    samples: list[dict[str, Any]] = []
    with daemon_process(state, cwd=root) as proc:
        start = time.monotonic()
        startup = rss_kib(proc.pid)
        pending = [c for c in checkpoints if c <= runs]
        last_series = 0.0
        while pending and time.monotonic() - start < max_seconds:
            count = counter.update()
            now = time.monotonic() - start
            if count >= pending[0] or now - last_series >= 5:
                sample = {"seconds": round(now, 2), "runs": count, **rss_kib(proc.pid)}
                passed = [c for c in pending if count >= c]
                if passed:
                    sample["checkpoints"] = passed
                    pending = pending[len(passed) :]
                samples.append(sample)
                last_series = now
            if proc.poll() is not None:
                raise SystemExit(
                    f"the daemon died:\n{(root / 'daemon.stderr').read_text()[-3000:]}"
                )
            time.sleep(0.02 if count < FIRST_AT else 0.2)
        elapsed = time.monotonic() - start
        final = {"seconds": round(elapsed, 2), "runs": counter.update(), **rss_kib(proc.pid)}
        stopped = stop_daemon(proc)
    records = read_records(state)
    outcomes: dict[str, int] = {}
    for record in records:
        if record.get("event") == "attempt_finished":
            outcomes[record.get("outcome", "?")] = outcomes.get(record.get("outcome", "?"), 0) + 1
    first = next(s for s in samples if FIRST_AT in s.get("checkpoints", ()))
    last = next((s for s in samples if runs in s.get("checkpoints", ())), None)
    end = last or final
    ratio = end["VmRSS"] / first["VmRSS"]
    return {
        "jobs": jobs,
        "job": {"command": ["true"], "lock": "key-NNNN", "schedule": {"every": "1s"}},
        "max_concurrent": "default (the global config's, 2)",
        "runs_wanted": runs,
        "max_seconds": max_seconds,
        "runs_reached": end["runs"],
        "reached_wanted": last is not None,
        "seconds": end["seconds"],
        "runs_per_s": end["runs"] / end["seconds"] if end["seconds"] else None,
        "rss_kib_at_startup": startup,
        "rss_kib_first": first,
        "rss_kib_last": end,
        "rss_ratio": ratio,
        "samples": samples,
        "finished_outcomes": outcomes,
        "target": f"VmRSS after {runs} runs within {round((RSS_TARGET_RATIO - 1) * 100)}% of "
        f"VmRSS after {FIRST_AT}",
        "target_met": last is not None and ratio <= RSS_TARGET_RATIO,
        "ratio_within_target_at_largest_count": ratio <= RSS_TARGET_RATIO,
        "daemon_stop": stopped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=180.0)
    args = parser.parse_args()

    with workspace("daemon-latency") as root:
        lat = latency(root, args.slots)
    print(f"latency: {args.slots} `at` slots 1 s apart, applied while the daemon ran")
    print(
        f"  start - slot: median {ms(lat['median_s'])}, min {ms(lat['min_s'])}, "
        f"max {ms(lat['max_s'])}"
    )
    print(f"  target <= {LATENCY_TARGET_S * 1000:g} ms: {verdict(lat['target_met'])}")
    print(f"  SIGTERM: exit {lat['daemon_stop']['exit_code']}")

    with workspace("daemon-memory") as root:
        mem = memory(root, args.jobs, args.runs, args.max_seconds)
    first, last = mem["rss_kib_first"], mem["rss_kib_last"]
    print(f"memory: {args.jobs} jobs `every: 1s` running `true`, {mem['runs_per_s']:.0f} runs/s")
    print(f"  VmRSS after {first['runs']} runs: {first['VmRSS']} KiB")
    print(
        f"  VmRSS after {last['runs']} runs: {last['VmRSS']} KiB (peak {last['VmHWM']} KiB), "
        f"{last['seconds']:.0f} s"
    )
    if not mem["reached_wanted"]:
        print(f"  {args.runs} runs NOT reached within {args.max_seconds:g} s")
    print(
        f"  ratio {mem['rss_ratio']:.3f}; target <= {RSS_TARGET_RATIO:g}: {verdict(mem['target_met'])}"
    )
    print(f"  outcomes: {mem['finished_outcomes']}")
    print(f"  SIGTERM: exit {mem['daemon_stop']['exit_code']}")

    exits_ok = lat["daemon_stop"]["exit_code"] == 0 and mem["daemon_stop"]["exit_code"] == 0
    path = write_results(
        NAME,
        {
            "bytecode": BYTECODE_NOTE,
            "command": "python -m agentjobs --state-dir S daemon",
            "latency": lat,
            "memory": mem,
            "sigterm_exit_0": exits_ok,
            "targets_met": lat["target_met"] and mem["target_met"],
        },
    )
    print(f"results: {path}")
    return 0 if lat["target_met"] and mem["target_met"] and exits_ok else 1


if __name__ == "__main__":
    sys.exit(main())
