"""`agentjobs logs RUN` over a 2 GiB attempt log: peak RSS (and wall time).

`logs` streams a log in 64 KiB chunks (agentjobs/logfile.py), so its memory must not grow with
the log (issue 10, item 13: it read the whole file, 4.2 GB RSS for a 2 GiB log). The log is
written quickly (a 1 MiB pattern of text lines, repeated) into a temporary state directory,
removed afterwards. Peak RSS is the process's own (wait4's rusage), stdout goes to /dev/null.
Also measured: `logs --tail 100` (seeks from the end) and `logs` of a 1 KiB log, for reference.
Target: peak RSS <= 50 MB.

    python bench/logs_2g.py [--gib 2] [--repeats 3]

Exit status: 0 when the target is met, 1 when it is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import AGENTJOBS_MODULE, REPO_ROOT, clean_env, verdict, workspace, write_results

NAME = "logs_2g"
TARGET_MB = 50.0
RUN_ID = "01BENCHLOGS2GIB00000000000"
SMALL_RUN_ID = "01BENCHLOGSSMALL0000000000"


def pattern() -> bytes:
    """1 MiB of numbered text lines (what an agent's log looks like, give or take)."""
    lines = []
    size = 0
    n = 0
    while size < 1024 * 1024:
        line = f"{n:07d} the agent says something about the tests it is fixing; " + "." * 60 + "\n"
        lines.append(line.encode())
        size += len(line)
        n += 1
    return b"".join(lines)[: 1024 * 1024]


def measure(args: list[str]) -> dict[str, Any]:
    """Run `python -m agentjobs ARGS` once: exit code, wall seconds, peak RSS (MB)."""
    env = {**clean_env(), "PYTHONPATH": str(REPO_ROOT)}  # the working tree's agentjobs
    began = time.perf_counter()
    proc = subprocess.Popen(
        [*AGENTJOBS_MODULE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    assert proc.stderr is not None
    errors = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"agentjobs {' '.join(args)} exited {code}:\n{errors}")
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with workspace("logs-2g") as root:
        state = root / "state"
        logs = state / "logs"
        logs.mkdir(parents=True)
        big: Path = logs / f"{RUN_ID}.1.log"
        chunk = pattern()
        began = time.perf_counter()
        with open(big, "wb") as handle:
            for _ in range(int(args.gib * 1024)):
                handle.write(chunk)
        written = time.perf_counter() - began
        (logs / f"{SMALL_RUN_ID}.1.log").write_bytes(chunk[:1024])
        size = big.stat().st_size
        print(f"log: {size / 2**30:.2f} GiB written in {written:.1f} s")
        base = ["--state-dir", str(state), "logs"]
        cases = {
            "logs (1 KiB log)": [*base, SMALL_RUN_ID],
            f"logs ({args.gib:g} GiB log)": [*base, RUN_ID],
            f"logs --tail 100 ({args.gib:g} GiB log)": [*base, RUN_ID, "--tail", "100"],
        }
        figures: dict[str, Any] = {}
        for label, command in cases.items():
            runs = [measure(command) for _ in range(args.repeats)]
            figures[label] = {
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "seconds_median": sorted(r["seconds"] for r in runs)[len(runs) // 2],
                "runs": runs,
            }
            print(
                f"{label:<32} peak RSS {figures[label]['peak_rss_mb']:6.1f} MB   "
                f"{figures[label]['seconds_median']:6.2f} s (median of {args.repeats})"
            )
        big.unlink()  # now, not only when the workspace goes: 2 GiB of disk
    peak = max(f["peak_rss_mb"] for f in figures.values())
    met = peak <= TARGET_MB
    print(f"peak RSS {peak:.1f} MB, target <= {TARGET_MB:g} MB: {verdict(met)}")
    path = write_results(
        NAME,
        {
            "log_bytes": size,
            "target_peak_rss_mb": TARGET_MB,
            "peak_rss_mb": peak,
            "met": met,
            "cases": figures,
            "note": "peak RSS from wait4 rusage of the agentjobs process alone; stdout to "
            "/dev/null; the log is a 1 MiB pattern of text lines repeated",
        },
    )
    print(f"results: {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
