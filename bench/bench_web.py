"""`agentjobs ui` over a state with 100,000 runs in history: server time per page (overview and
timeline) and the server's memory over 1,000 loads of each.

Eight jobs on eight lock keys are applied and run once by a real tick (four agent jobs, whose
CLI is not installed here: their runs fail at once and are dead-lettered, so the overview has
dead letters; four commands), so the state and the records' shape are what agentjobs writes.
Then 100,000 runs are generated into `<state>/records/YYYY-MM-DD.jsonl` over the 30 days before
now (attempt_started/attempt_finished pairs with every field of the real records; agent jobs
with cost and turns; 3% fail once and are retried, 1% fail for good), the runs of one lock key
one after another, as the locks make them. The real server is started (`python -m agentjobs
ui --port 0`: uvicorn, one process) and the pages are loaded over HTTP, one after another:
`/` (overview) and `/timeline` (24 h) in turns, `--loads` times each.

Server time is what the `Server-Timing: app;dur=` header says (the time until the response
starts; a page is rendered by then); the client's wall time is reported beside it. The
server's RSS is read from /proc every 50 rounds. For reference (no target): the 6 h and 7 d
timelines, history, a job and a run page, the first load of each page (an empty day cache),
and the timeline after 1,000 records are appended to today's file.

Targets: median and p95 server time <= 300 ms for both pages; RSS after the last round within
10% of RSS after round 100 (memory flat).

    python bench/bench_web.py [--runs 100000] [--days 30] [--loads 1000]

Exit status: 0 when the targets are met, 1 when one is missed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    AGENTJOBS_MODULE,
    BYTECODE_NOTE,
    apply_jobs,
    clean_env,
    read_records,
    run,
    verdict,
    workspace,
    write_job_docs,
    write_results,
)

NAME = "web"
TARGET_MS = 300.0
RSS_GROWTH = 0.10
KEYS = 8
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(moment: datetime) -> str:
    value = (int(moment.timestamp() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def write_history(state: Path, runs: int, days: int, now: datetime) -> dict[str, Any]:
    """`runs` runs over the `days` days before `now`, day file by day file (constant memory),
    each record with every field of the real ones the first tick wrote."""
    real = read_records(state)
    started_tpl = next(r for r in real if r["event"] == "attempt_started")
    finished_tpl = next(r for r in real if r["event"] == "attempt_finished")
    applied = json.loads((state / "applied.json").read_text())["jobs"]
    names = sorted(applied)
    rng = random.Random(7)
    end = now - timedelta(minutes=5)
    start = end - timedelta(days=days)
    per_key = runs // len(names)
    cycle = (end - start).total_seconds() / per_key  # each key: one run per cycle
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    logs = finished_tpl["log_path"].rsplit("/", 1)[0]
    by_day: dict[str, list[str]] = {}
    written = failures = retried = 0
    day_start = start.replace(hour=0, minute=0, second=0)

    def flush(before: str) -> None:
        for day in sorted(d for d in by_day if d < before):
            path = state / "records" / f"{day}.jsonl"
            existing = path.read_text() if path.exists() else ""
            path.write_text("\n".join(by_day.pop(day)) + "\n" + existing)

    while day_start < end:
        day_end = day_start + timedelta(days=1)
        for k, name in enumerate(names):
            spec = applied[name]["spec"]
            agent = spec.get("agent") is not None
            first = max(0, int(((day_start - start).total_seconds()) // cycle))
            last = min(per_key, int(((day_end - start).total_seconds()) // cycle) + 1)
            for i in range(first, last):
                slot = start + timedelta(seconds=i * cycle + k * 7)
                if not day_start <= slot < day_end:
                    continue
                run_id = ulid(slot)
                roll = rng.random()
                attempts = 2 if roll < 0.04 else 1  # 3% retried then fine, 1% dead
                began = slot + timedelta(seconds=rng.uniform(0, cycle * 0.1))
                for attempt in range(1, attempts + 1):
                    took = rng.uniform(0.1, 0.35) * cycle
                    ended = began + timedelta(seconds=took)
                    failed = attempt < attempts or roll < 0.01
                    common = {
                        "run_id": run_id,
                        "job": name,
                        "attempt": attempt,
                        "trigger": "schedule" if attempt == 1 else "retry",
                        "slot": stamp(slot),
                        "queued_at": stamp(slot),
                        "lock_key": spec["lock"],
                        "priority": "normal",
                        "host": started_tpl["host"],
                        "pid": 40000 + i % 20000,
                        "spec_hash": applied[name]["spec_hash"],
                        "git_commit": started_tpl.get("git_commit"),
                        "corrective": False,
                    }
                    log_path = f"{logs}/{run_id}.{attempt}.log"
                    started = {
                        **{k2: started_tpl[k2] for k2 in started_tpl},
                        **common,
                        "event": "attempt_started",
                        "time": stamp(began),
                        "started_at": stamp(began),
                        "log_path": log_path,
                    }
                    finished = {
                        **{k2: finished_tpl[k2] for k2 in finished_tpl},
                        **common,
                        "event": "attempt_finished",
                        "time": stamp(ended),
                        "started_at": stamp(began),
                        "finished_at": stamp(ended),
                        "duration_s": round(took, 3),
                        "outcome": "failed" if failed else "succeeded",
                        "exit_code": 1 if failed else 0,
                        "error": "exit code 1" if failed else None,
                        "output_tail": "FAILED tests/test_api.py::test_login\n"
                        if failed
                        else "42 passed in 3.1s\n",
                        "log_path": log_path,
                        "next": "retry"
                        if attempt < attempts
                        else ("dead_letter" if failed else "done"),
                        "next_attempt_at": stamp(ended + timedelta(seconds=60))
                        if attempt < attempts
                        else None,
                        "reason": "failed" if failed else "succeeded",
                    }
                    if agent:
                        cost = round(rng.uniform(0.02, 0.9), 4)
                        finished["agent"] = {"num_turns": rng.randint(3, 40), "session_id": run_id}
                        finished["cost_usd"] = cost
                    for record in (started, finished):
                        by_day.setdefault(record["time"][:10], []).append(encode(record))
                        written += 1
                    failures += failed
                    retried += attempt > 1
                    began = ended + timedelta(seconds=60)
        day_start = day_end
        flush(f"{day_start:%Y-%m-%d}")
    flush("9999")
    files = sorted((state / "records").glob("*.jsonl"))
    return {
        "runs_generated": per_key * len(names),
        "records_generated": written,
        "failed_attempts": failures,
        "retries": retried,
        "days": days,
        "day_files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "today_file_bytes": files[-1].stat().st_size,
    }


class Client:
    """One keep-alive HTTP connection; each GET's server time (Server-Timing) and wall time."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.connect()
        # no Nagle: a request's header and body segments would wait for a delayed ACK (40 ms)
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path: str) -> tuple[float, float, int]:
        began = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        wall = (time.perf_counter() - began) * 1000
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:300]!r}")
        timing = response.getheader("server-timing") or ""
        found = re.search(r"dur=([0-9.]+)", timing)
        if found is None:
            raise SystemExit(f"GET {path}: no Server-Timing header")
        return float(found.group(1)), wall, len(body)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
        "max_ms": round(ordered[-1], 2),
        "min_ms": round(ordered[0], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "count": len(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--loads", type=int, default=1000)
    args = parser.parse_args()

    with workspace("web") as root:
        jobs_dir, state = root / "jobs.d", root / "state"
        for k in range(KEYS):
            (root / "work" / f"repo-{k}").mkdir(parents=True)
        docs = []
        for k in range(KEYS):
            doc: dict[str, Any] = {
                "name": f"{'agent' if k < 4 else 'cmd'}-{k}",
                "workdir": f"../work/repo-{k}",
                "schedule": {"every": "4h"},
            }
            if k < 4:
                doc["agent"] = {"kind": "claude", "prompt": "Run the tests and fix failures."}
            else:
                doc["command"] = ["true"]
            docs.append(doc)
        write_job_docs(jobs_dir, docs)
        apply_jobs(jobs_dir, state)
        run([*AGENTJOBS_MODULE, "--state-dir", str(state), "tick"], cwd=root, expect=(0, 1))
        now = datetime.now(UTC)
        began = time.perf_counter()
        history = write_history(state, args.runs, args.days, now)
        history["generate_s"] = round(time.perf_counter() - began, 1)
        print(
            f"generated {history['runs_generated']} runs, {history['records_generated']} records "
            f"({history['bytes'] / 1e6:.0f} MB in {history['day_files']} day files) in "
            f"{history['generate_s']} s"
        )
        serve = ["--state-dir", str(state), "--jobs-dir", str(jobs_dir), "ui", "--port", "0"]
        server = subprocess.Popen(
            [*AGENTJOBS_MODULE, *serve],
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=root,
        )
        try:
            assert server.stderr is not None
            line = server.stderr.readline()
            found = re.search(r"127\.0\.0\.1:(\d+)/", line)
            if found is None:
                raise SystemExit(f"the server did not start: {line}")
            client = Client(int(found.group(1)))
            results = measure(client, server.pid, state, args.loads)
        finally:
            server.terminate()
            server.communicate(timeout=30)

    pages = results["pages"]
    met_time = all(
        pages[p]["server"]["median_ms"] <= TARGET_MS and pages[p]["server"]["p95_ms"] <= TARGET_MS
        for p in ("overview", "timeline_24h")
    )
    rss = results["rss"]
    met_rss = rss["last_mb"] <= rss["after_100_mb"] * (1 + RSS_GROWTH)
    for name, figures in pages.items():
        server_ms, wall = figures["server"], figures["wall"]
        print(
            f"  {name:16} server median {server_ms['median_ms']:7.1f} ms, p95 "
            f"{server_ms['p95_ms']:7.1f} ms ({server_ms['count']} loads; wall median "
            f"{wall['median_ms']:.1f} ms; {figures['bytes']} bytes)"
        )
    for name, value in results["first_load_ms"].items():
        print(f"  first load (empty cache) {name}: {value:.1f} ms")
    print(
        f"  timeline after 1,000 records appended today: {results['after_append_ms']:.1f} ms "
        f"(then {results['after_append_then_ms']:.1f} ms)"
    )
    print(
        f"  RSS: {rss['after_100_mb']:.1f} MB after 100 rounds, {rss['last_mb']:.1f} MB after "
        f"{args.loads}, max {rss['max_mb']:.1f} MB"
    )
    print(f"  target server time <= {TARGET_MS:g} ms (median and p95): {verdict(met_time)}")
    print(f"  target RSS flat (<= +{RSS_GROWTH:.0%} after round 100): {verdict(met_rss)}")
    path = write_results(
        NAME,
        {
            "history": history,
            "bytecode": BYTECODE_NOTE,
            "loads_per_page": args.loads,
            **results,
            "target": (
                f"overview and 24 h timeline: median and p95 server time <= {TARGET_MS:g} ms; "
                f"RSS after {args.loads} rounds <= RSS after 100 rounds + {RSS_GROWTH:.0%}"
            ),
            "target_met": met_time and met_rss,
            "target_time_met": met_time,
            "target_rss_met": met_rss,
        },
    )
    print(f"results: {path}")
    return 0 if met_time and met_rss else 1


def measure(client: Client, pid: int, state: Path, loads: int) -> dict[str, Any]:
    first = {
        "timeline_24h": client.get("/timeline")[0],
        "overview": client.get("/")[0],
    }
    rss_before = rss_mb(pid)
    server: dict[str, list[float]] = {"overview": [], "timeline_24h": []}
    wall: dict[str, list[float]] = {"overview": [], "timeline_24h": []}
    size: dict[str, int] = {}
    rss: list[tuple[int, float]] = []
    for i in range(1, loads + 1):
        for name, path in (("overview", "/"), ("timeline_24h", "/timeline")):
            s, w, n = client.get(path)
            server[name].append(s)
            wall[name].append(w)
            size[name] = n
        if i % 50 == 0:
            rss.append((i, rss_mb(pid)))
            print(f"  {i} rounds: RSS {rss[-1][1]:.1f} MB", flush=True)
    extra = {
        "timeline_6h": "/timeline?span=6h",
        "timeline_7d": "/timeline?span=7d",
        "history": "/history",
        "job": "/jobs/agent-0",
    }
    finished = [r for r in read_today(state) if r["event"] == "attempt_finished"]
    extra["run"] = f"/runs/{finished[len(finished) // 2]['run_id']}"
    for name, path in extra.items():
        server[name], wall[name] = [], []
        for _ in range(30):
            s, w, n = client.get(path)
            server[name].append(s)
            wall[name].append(w)
            size[name] = n
    append_today(state, 1000)
    after = client.get("/timeline")[0]
    after_then = client.get("/timeline")[0]
    pages = {
        name: {"server": summary(server[name]), "wall": summary(wall[name]), "bytes": size[name]}
        for name in server
    }
    after_100 = next(v for i, v in rss if i == 100) if loads >= 100 else rss[0][1]
    return {
        "pages": pages,
        "first_load_ms": first,
        "after_append_ms": after,
        "after_append_then_ms": after_then,
        "rss": {
            "before_loads_mb": round(rss_before, 1),
            "after_100_mb": round(after_100, 1),
            "last_mb": round(rss[-1][1], 1),
            "max_mb": round(max(v for _, v in rss), 1),
            "samples": [{"round": i, "mb": round(v, 1)} for i, v in rss],
        },
    }


def read_today(state: Path) -> list[dict[str, Any]]:
    path = sorted((state / "records").glob("*.jsonl"))[-1]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_today(state: Path, count: int) -> None:
    """`count` more records at the end of today's file (as ticks would append them)."""
    path = sorted((state / "records").glob("*.jsonl"))[-1]
    template = next(r for r in read_today(state) if r["event"] == "attempt_finished")
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    lines = []
    for n in range(count):
        record = dict(template)
        record["run_id"] = ulid(datetime.now(UTC)) if n % 2 == 0 else record["run_id"]
        lines.append(encode(record))
    with open(path, "a") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
