"""Recovery of 20 orphans with 1,000,000 other records in the day's file: the recovering tick's
wall time, peak RSS and the longest time it holds the state lock.

An orphan is a running queue item whose lock key is free (its tick and supervisor are gone). The
state is built the way a tick builds it: 20 jobs on keys of their own are applied, enqueued and
claimed by the engine (the claim's state write, which remembers where the records ended), each
with its `attempt_started` record, and the claiming process is gone. Half of the orphans also have
their `attempt_finished` record (a supervisor killed after recording, before settling: settled as
recorded), half have none (recorded `lost`). The other records are one encoded `attempt_finished`
line of another job written many times (~800 bytes each, ~0.8 GB).

Two placements of the other records:
- `history`: written before the claims (the day's history; the issue's case);
- `during`: written after the claims, while the attempts ran (the worst case for a lookup that
  starts where each attempt's claim left the records: everything must be searched).

During the tick a probe in this process tries the state lock (`flock LOCK_NB`, released at once)
every millisecond and reports the longest stretch it found it held, and an `agentjobs apply
--lock-timeout 2` runs concurrently (it must succeed). With `--old REV`, the same is measured for
an older commit (a detached git worktree, `--old-records` other records: the old lookup parses
every record once per orphan, so a smaller count keeps it short) for comparison.
Target: the recovering tick <= 1 s in the `history` case (the `during` case is reported beside
it: there the lookup's cost is every byte written since the claims, ~1 GB/s of regex search).

    python bench/recovery.py [--records 1000000] [--orphans 20] [--repeats 5]
                             [--old 39b9ed1 --old-records 100000]

Each case is measured `--repeats` times from the same state (runtime.json and the day file are
put back between runs); the median run is reported.

Exit status: 0 when the target is met, 1 when it is missed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import AGENTJOBS_MODULE, REPO_ROOT, clean_env, verdict, workspace, write_results

NAME = "recovery"
TARGET_S = 1.0
T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)

# Claim `count` queued items the way a tick does, then forget the claims (the keys come free):
# run with the PYTHONPATH of the agentjobs under test.
SETUP = """
import json, sys
from datetime import datetime
from pathlib import Path
from agentjobs.clock import Clock, iso
from agentjobs.engine import Engine
from agentjobs.store.files import FileStore
state, t0, count = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
engine = Engine(FileStore(state), clock=Clock(t0), host="bench-host")
engine._prepare()
for _ in range(count):
    claim = engine._claim()
    claim.key.release()
    claim.slot.release()
    started = engine._record("attempt_started", claim.item, claim.applied, started_at=iso(t0))
    engine.store.append_records([started], t0)
    print(json.dumps(claim.item.to_dict()))
"""


def env_for(tree: Path) -> dict[str, str]:
    return {**clean_env(), "PYTHONPATH": str(tree)}


def other_record() -> bytes:
    record = {
        "event": "attempt_finished",
        "time": "2030-01-07T08:00:01+00:00",
        "run_id": "01JOTHERRUN000000000000000",
        "job": "some-other-job",
        "attempt": 1,
        "trigger": "schedule",
        "slot": "2030-01-07T08:00:00+00:00",
        "queued_at": "2030-01-07T08:00:00+00:00",
        "lock_key": "/home/dev/src/other-app",
        "priority": "normal",
        "host": "builder-1",
        "pid": 123456,
        "spec_hash": "f" * 64,
        "git_commit": None,
        "corrective": False,
        "started_at": "2030-01-07T08:00:00+00:00",
        "finished_at": "2030-01-07T08:00:01+00:00",
        "duration_s": 1.0,
        "outcome": "succeeded",
        "exit_code": 0,
        "signal": None,
        "error": None,
        "output_tail": "all 214 tests passed\n" * 15,
        "log_path": "/home/dev/.agentjobs/logs/01JOTHERRUN000000000000000.1.log",
        "next": "done",
        "next_attempt_at": None,
        "reason": None,
    }
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def append_others(day_file: Path, count: int) -> None:
    line = other_record()
    block = line * 10_000
    with open(day_file, "ab") as handle:
        for _ in range(count // 10_000):
            handle.write(block)
        handle.write(line * (count % 10_000))


def finish_record(item: dict[str, Any]) -> bytes:
    record = {
        "event": "attempt_finished",
        "time": "2030-01-07T09:00:30+00:00",
        "run_id": item["run_id"],
        "job": item["job"],
        "attempt": item["attempt"],
        "trigger": item["trigger"],
        "slot": item.get("slot"),
        "queued_at": item["queued_at"],
        "lock_key": item["lock_key"],
        "priority": item["priority"],
        "host": "gone",
        "pid": 1,
        "started_at": T0.isoformat(),
        "finished_at": "2030-01-07T09:00:30+00:00",
        "duration_s": 30.0,
        "outcome": "succeeded",
        "exit_code": 0,
        "signal": None,
        "error": None,
        "output_tail": "ok\n",
        "log_path": "",
        "next": "done",
        "next_attempt_at": None,
        "reason": None,
    }
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


class LockProbe:
    """Tries the state lock every millisecond; the longest stretch it was found held, by
    holder (the pid the holder wrote into the lock file, named with `names`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: dict[int, str] = {}
        self.longest: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        since: float | None = None
        holder = "?"
        try:
            while not self.done.is_set():
                now = time.monotonic()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    if since is not None:
                        self.longest[holder] = max(self.longest.get(holder, 0.0), now - since)
                    since = None
                except BlockingIOError:
                    if since is None:
                        since = now
                        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
                        pid = int(text) if text.isdigit() else 0
                        holder = self.names.get(pid, f"pid {pid}")
                time.sleep(0.001)
        finally:
            os.close(fd)


def measure(
    tree: Path, root: Path, orphans: int, others: int, placement: str, repeats: int
) -> dict[str, Any]:
    env = env_for(tree)
    jobs_dir, state = root / "jobs.d", root / "state"
    jobs_dir.mkdir(parents=True)
    for n in range(orphans):
        (jobs_dir / f"orphan-{n:02d}.yaml").write_text(
            json.dumps(
                {
                    "command": [sys.executable, "-c", "pass"],
                    "schedule": {"every": "1d"},
                    "lock": f"key-{n:02d}",
                    "retry": {"attempts": 3, "backoff": {"initial": "1h", "max": "1h"}},
                }
            )
        )
    base = [*AGENTJOBS_MODULE, "--jobs-dir", str(jobs_dir), "--state-dir", str(state)]
    applied = subprocess.run(
        [*base, "apply", "--now", T0.isoformat()], env=env, capture_output=True, text=True
    )
    if applied.returncode != 0:
        raise SystemExit(f"apply failed: {applied.stdout}{applied.stderr}")
    day_file = state / "records" / f"{T0:%Y-%m-%d}.jsonl"
    day_file.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    if placement == "history":
        append_others(day_file, others)
    setup = subprocess.run(
        [sys.executable, "-c", SETUP, str(state), T0.isoformat(), str(orphans)],
        env=env,
        capture_output=True,
        text=True,
    )
    if setup.returncode != 0:
        raise SystemExit(f"setup failed: {setup.stderr}")
    items = [json.loads(line) for line in setup.stdout.splitlines()]
    if placement == "during":
        append_others(day_file, others)
    with open(day_file, "ab") as handle:  # half of them were recorded before they were lost
        for item in items[::2]:
            handle.write(finish_record(item))
        handle.flush()
        # on disk now: a record append fdatasyncs the day file, and would otherwise be charged
        # with flushing what this benchmark just wrote (agentjobs syncs each append as it goes)
        os.fsync(handle.fileno())
    built = time.perf_counter() - began
    size = day_file.stat().st_size

    saved = (state / "runtime.json").read_bytes()
    runs = []
    for _ in range(repeats):  # each from the same state: runtime.json and the day file restored
        (state / "runtime.json").write_bytes(saved)
        os.truncate(day_file, size)
        runs.append(recover_once(base, env, state, len(items[::2])))
    middle = sorted(runs, key=lambda r: r["tick_s"])[len(runs) // 2]
    return {
        "tree": str(tree),
        "placement": placement,
        "other_records": others,
        "day_file_mb": round(size / 1e6, 1),
        "built_s": round(built, 1),
        **middle,
        "tick_s_all": [r["tick_s"] for r in runs],
        "tick_cpu_s_all": [r["tick_cpu_s"] for r in runs],
        "longest_state_lock_hold_s": {
            who: max(r["longest_state_lock_hold_s"].get(who, 0.0) for r in runs)
            for who in {w for r in runs for w in r["longest_state_lock_hold_s"]}
        },
        "concurrent_apply_exit": max(r["concurrent_apply_exit"] for r in runs),
    }


def recover_once(
    base: list[str], env: dict[str, str], state: Path, recorded: int
) -> dict[str, Any]:
    """One recovering tick, with the lock probe and a concurrent apply."""
    probe = LockProbe(state / "state.lock")
    probe.thread.start()
    tick_began = time.perf_counter()
    tick = subprocess.Popen(
        [*base, "tick", "--now", (T0 + timedelta(minutes=2)).isoformat()],
        env={**env, "AGENTJOBS_HOST": "bench-host"},  # 39b9ed1 skipped other hosts
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    probe.names[tick.pid] = "tick"
    time.sleep(0.05)
    apply_began = time.perf_counter()
    applying = subprocess.Popen(
        [*base, "apply", "--lock-timeout", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    probe.names[applying.pid] = "apply"
    _, apply_err = applying.communicate()
    apply_s = time.perf_counter() - apply_began
    _, status, usage = os.wait4(tick.pid, 0)
    tick_s = time.perf_counter() - tick_began
    probe.done.set()
    probe.thread.join()
    assert tick.stdout is not None and tick.stderr is not None
    err = tick.stderr.read().decode(errors="replace")
    tick.stdout.close()
    tick.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"tick exited {code}:\n{err}")
    runtime = json.loads((state / "runtime.json").read_text())
    running = [i for i in runtime["queue"].values() if i.get("state") == "running"]
    return {
        "tick_s": round(tick_s, 3),
        # CPU time (user + system): what the tick costs, less disturbed by a busy machine
        "tick_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "tick_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "longest_state_lock_hold_s": {k: round(v, 3) for k, v in probe.longest.items()},
        "concurrent_apply_exit": applying.returncode,
        "concurrent_apply_s": round(apply_s, 3),
        "concurrent_apply_error": (apply_err.strip().splitlines() or [""])[-1]
        if applying.returncode
        else None,
        "recovered_lost": err.count("was lost"),
        "settled_as_recorded": recorded,
        "still_running_after": len(running),
    }


def show(label: str, r: dict[str, Any]) -> None:
    held = ", ".join(f"{v:.3f} ({k})" for k, v in r["longest_state_lock_hold_s"].items())
    print(
        f"{label:<44} tick {r['tick_s']:7.3f} s (median; all {r['tick_s_all']}; CPU {r['tick_cpu_s']:.3f} s)  peak RSS {r['tick_peak_rss_mb']:6.1f} MB  "
        f"state lock held <= {held} s  concurrent apply "
        f"(--lock-timeout 2) exit {r['concurrent_apply_exit']}  lost {r['recovered_lost']}, "
        f"left running {r['still_running_after']}"
    )


def old_tree(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(into), rev],
        check=True,
        capture_output=True,
    )
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--orphans", type=int, default=20)
    parser.add_argument("--old", help="an older commit to measure too (e.g. 39b9ed1)")
    parser.add_argument("--old-records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5, help="recovering ticks per case")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with workspace("recovery") as root:
        for placement in ("history", "during"):
            label = f"{args.orphans} orphans, {args.records:,} records ({placement})"
            result = measure(
                REPO_ROOT, root / placement, args.orphans, args.records, placement, args.repeats
            )
            figures[label] = result
            show(label, result)
            _drop(root / placement)
        if args.old:
            tree = old_tree(args.old, root / "old")
            try:
                label = f"OLD {args.old}: {args.orphans} orphans, {args.old_records:,} records"
                result = measure(
                    tree, root / "old-run", args.orphans, args.old_records, "history", 1
                )
                figures[label] = result
                show(label, result)
            finally:
                subprocess.run(
                    ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                    capture_output=True,
                )
    mine = [r for label, r in figures.items() if not label.startswith("OLD")]
    # the target is the issue's case (a day's records, then the orphans); `during` is the
    # bound of the scheme (every byte since the claims searched), reported beside it
    issue_case = next(r for r in mine if r["placement"] == "history")
    met = issue_case["tick_s"] <= TARGET_S and all(
        r["concurrent_apply_exit"] == 0 and r["still_running_after"] == 0 for r in mine
    )
    worst = max(r["tick_s"] for r in mine)
    print(
        f"recovering tick {issue_case['tick_s']:.3f} s with the records before the claims, "
        f"target <= {TARGET_S:g} s: {verdict(met)} (all written after the claims: {worst:.3f} s)"
    )
    path = write_results(
        NAME,
        {
            "target_tick_s": TARGET_S,
            "target_case": "history",
            "met": met,
            "cases": figures,
            "note": "tick wall time from spawn to exit (Python start-up included) and peak RSS "
            "from wait4; the state lock probed with flock LOCK_NB every 1 ms from the benchmark "
            "process, attributed by the pid the holder writes into the lock file; the concurrent "
            "apply starts 50 ms after the tick; half the orphans have an attempt_finished record (settled as recorded), half none (recorded lost)",
        },
    )
    print(f"results: {path}")
    return 0 if met else 1


def _drop(folder: Path) -> None:
    """Free the disk of a measured case at once (the day file is ~0.8 GB)."""
    for path in (folder / "state" / "records").glob("*.jsonl"):
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())
