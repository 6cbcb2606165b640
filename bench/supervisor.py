"""The per-attempt cost of the supervisor (agentjobs/supervisor.py), measured without an agent.

1. Spawn round trip: a `ForkServer` whose handler returns `{}` at once, so the whole `_child`
   path runs (setsid, subreaper, closing inherited descriptors, the go/ack pipes, the result
   message) and nothing else. `supervise()` is timed `--calls` times after `--warmup` untimed
   calls, interleaved with a bare `os.fork()` + `os._exit(0)` + `waitpid` in this process and
   with `subprocess.run(["true"])`, so load on the machine hits all three alike. The first call
   (which forks the server) is reported apart.
2. Inside a real attempt: `--jobs` jobs running `true` (each its own lock key,
   `schedule: {every: 1h}`, applied with the CLI as bench/throughput.py does), run by one
   in-process `Engine(FileStore(S), max_concurrent=1).tick()`, against the same number of bare
   `agentjobs.runner.run_process(["true"], ...)` calls (running and logging a process, without
   claims, records or a supervisor). Supervisors are children of the fork server, not of this
   process, so only wall time is compared. Passes alternate (baseline, tick, baseline, tick).
   For context: the tick process's own CPU, and one 200-byte append + fdatasync in the same
   directory (each attempt's state and record writes make several such syncs).
3. Supervisor memory: while a handler sleeps 0.3 s, the supervisor's VmRSS (/proc/PID/status)
   and Rss, Pss and private memory (/proc/PID/smaps_rollup). A forked process shares most of its
   pages with the fork server and the tick, so Pss (shared pages divided among their users) and
   private memory (what only it holds) are the honest figures; VmRSS counts shared pages fully.
   The same figures are read once more for a real attempt's supervisor (a job `sleep 0.5`).

    python bench/supervisor.py [--calls 300] [--warmup 20] [--jobs 200] [--passes 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import apply_jobs, ms, read_records, workspace, write_job_docs, write_results

from agentjobs.engine import Engine
from agentjobs.runner import run_process
from agentjobs.store.files import FileStore
from agentjobs.supervisor import Channel, ForkServer, Lane, supervise

NAME = "supervisor"
HOLD_S = 0.3  # how long the memory handler keeps its supervisor alive

_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run


def _quiet(line: str) -> None:
    print(line, file=_DEVNULL)


def _nothing() -> None:
    pass


def _settled(_record: dict[str, Any]) -> bool:
    return True


def _instant(_request: dict[str, Any], _fds: list[int], _channel: Channel) -> dict[str, Any]:
    return {}


def stats_ms(samples: Sequence[float]) -> dict[str, Any]:
    """Median, p95 and spread of timing samples (seconds in, milliseconds out)."""
    values = sorted(s * 1000 for s in samples)
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else 0
    return {
        "median_ms": round(statistics.median(values), 4),
        "p95_ms": round(p95, 4),
        "min_ms": round(values[0], 4),
        "max_ms": round(values[-1], 4),
        "mean_ms": round(statistics.fmean(values), 4),
        "runs": len(values),
        "samples_ms": [round(s * 1000, 4) for s in samples],
    }


# -- 1. spawn round trip ---------------------------------------------------------------------


def supervise_once(lane: Lane, say: Callable[[str], None] = _quiet) -> float:
    stop = threading.Event()
    start = time.perf_counter()
    result = supervise(
        lane,
        {},
        keep_fds=(),
        after_fork=_nothing,
        settle=_settled,
        stop=stop,
        say=say,
        on_output=None,
    )
    elapsed = time.perf_counter() - start
    if result != {}:
        raise SystemExit(f"the supervisor returned {result!r}, not {{}}")
    return elapsed


def fork_once() -> float:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"the bare fork's child exited with status {status}")
    return elapsed


def true_once() -> float:
    start = time.perf_counter()
    subprocess.run(["true"], check=True)
    return time.perf_counter() - start


def fresh_once(server: ForkServer, say: Callable[[str], None] = _quiet) -> float:
    """A new supervisor (a lane of its own, closed after): the first attempt of a worker."""
    lane = Lane(server)
    try:
        return supervise_once(lane, say)
    finally:
        lane.close()


def spawn_round_trip(calls: int, warmup: int) -> dict[str, Any]:
    server = ForkServer(_instant)
    reused = Lane(server)
    samples: dict[str, list[float]] = {"supervise": [], "reused": [], "fork": [], "true": []}
    try:
        first = fresh_once(server)
        for _ in range(warmup):
            fresh_once(server)
            supervise_once(reused)
            fork_once()
            true_once()
        for _ in range(calls):  # interleaved, so drift on the machine hits all alike
            samples["supervise"].append(fresh_once(server))
            samples["reused"].append(supervise_once(reused))
            samples["fork"].append(fork_once())
            samples["true"].append(true_once())
    finally:
        reused.close()
        server.close()
    out = {name: stats_ms(values) for name, values in samples.items()}
    sup = out["supervise"]["median_ms"]
    return {
        "first_call_ms": round(first * 1000, 4),
        "supervise": out["supervise"],
        "supervise_reused": out["reused"],
        "bare_fork_exit_waitpid": out["fork"],
        "subprocess_run_true": out["true"],
        "supervise_in_bare_forks": round(sup / out["fork"]["median_ms"], 2),
        "supervise_in_true_runs": round(sup / out["true"]["median_ms"], 3),
    }


# -- 2. inside a real attempt ----------------------------------------------------------------


def jobs(count: int, command: Sequence[str] = ("true",)) -> list[dict[str, Any]]:
    return [
        {
            "name": f"job-{i:04d}",
            "command": list(command),
            "lock": f"key-{i:04d}",
            "schedule": {"every": "1h"},
            "workdir": "../work",
        }
        for i in range(count)
    ]


def applied_state(root: Path, name: str, docs: Sequence[dict[str, Any]]) -> Path:
    jobs_dir = root / f"{name}.jobs.d"
    write_job_docs(jobs_dir, docs)
    state = root / f"{name}.state"
    summary = apply_jobs(jobs_dir, state)
    if not summary.startswith(f"Applied: {len(docs)} to create"):
        raise SystemExit(f"apply did not create the {len(docs)} jobs: {summary}")
    return state


def tick_pass(template: Path, state: Path, count: int) -> tuple[float, float]:
    """Wall seconds of one tick running `count` attempts, and this process's CPU seconds
    (every thread; the supervisors' and their children's CPU is not visible here)."""
    shutil.copytree(template, state)
    engine = Engine(FileStore(state), max_concurrent=1)
    start, cpu = time.perf_counter(), time.process_time()
    result = engine.tick()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    outcomes = [a.outcome for a in result.attempts]
    finished = [r for r in read_records(state) if r["event"] == "attempt_finished"]
    if outcomes != ["succeeded"] * count or len(finished) != count:
        raise SystemExit(
            f"expected {count} succeeded attempts and records; got outcomes "
            f"{sorted(set(outcomes))} x{len(outcomes)}, {len(finished)} records"
        )
    shutil.rmtree(state)
    return elapsed, cpu


def run_process_pass(root: Path, count: int) -> tuple[float, float]:
    """`count` bare `run_process(["true"])` calls, each logging to a new file (as attempts do):
    wall seconds, and CPU seconds of this process plus its (reaped) children."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cwd = Path(tmp) / "cwd"
        cwd.mkdir()
        env = dict(os.environ)
        start, cpu = time.perf_counter(), _cpu_with_children()
        for i in range(count):
            done = run_process(
                ["true"],
                cwd=str(cwd),
                env=env,
                log_path=Path(tmp) / "logs" / f"{i}.log",
                timeout=60,
                silence_timeout=None,
                kill_grace=1,
            )
            if done.exit_code != 0:
                raise SystemExit(f"run_process(['true']) ended {done}")
        return time.perf_counter() - start, _cpu_with_children() - cpu


def _cpu_with_children() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def sync_latency(root: Path, samples: int) -> dict[str, Any]:
    """Context for the overhead: one durable append (200 bytes + fdatasync) in the same
    directory, as the store's record and state writes do several times per attempt."""
    path = root / "sync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(samples):
            start = time.perf_counter()
            os.write(fd, b"x" * 199 + b"\n")
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return stats_ms(times)


def real_attempts(root: Path, count: int, passes: int) -> dict[str, Any]:
    (root / "work").mkdir(exist_ok=True)
    template = applied_state(root, "true", jobs(count))
    run_process_pass(root, min(count, 20))  # warm-up: page cache, first forks
    ticks, bare, tick_cpu, bare_cpu = [], [], [], []
    for n in range(passes):  # alternating, so load on the machine hits both alike
        wall, cpu = run_process_pass(root, count)
        bare.append(wall)
        bare_cpu.append(cpu)
        wall, cpu = tick_pass(template, root / f"state-{n}", count)
        ticks.append(wall)
        tick_cpu.append(cpu)
        print(
            f"  pass {n + 1}: tick {ticks[-1]:.2f} s, {count} x run_process {bare[-1]:.2f} s",
            flush=True,
        )
    tick_s, bare_s = statistics.median(ticks), statistics.median(bare)
    return {
        "attempts": count,
        "passes": passes,
        "tick_s": [round(t, 4) for t in ticks],
        "run_process_s": [round(t, 4) for t in bare],
        "tick_median_s": round(tick_s, 4),
        "run_process_median_s": round(bare_s, 4),
        "tick_ms_per_attempt": round(tick_s / count * 1000, 4),
        "run_process_ms_per_call": round(bare_s / count * 1000, 4),
        "overhead_ms_per_attempt": round((tick_s - bare_s) / count * 1000, 4),
        "tick_process_cpu_ms_per_attempt": round(statistics.median(tick_cpu) / count * 1000, 4),
        "run_process_cpu_ms_per_call": round(statistics.median(bare_cpu) / count * 1000, 4),
        "cpu_note": "tick: this process's CPU (all threads), not the supervisors' or `true`'s "
        "(they are not its children); run_process: this process's CPU plus `true`'s",
    }


# -- 3. supervisor memory --------------------------------------------------------------------


def memory_kib(pid: int | str) -> dict[str, int]:
    """VmRSS (status) and Rss, Pss, private (clean + dirty) from smaps_rollup, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    out = {"VmRSS": _kib(status, "VmRSS")}
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    out["Rss"] = _kib(rollup, "Rss")
    out["Pss"] = _kib(rollup, "Pss")
    out["Private"] = _kib(rollup, "Private_Clean") + _kib(rollup, "Private_Dirty")
    return out


def _kib(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise SystemExit(f"no {key} in /proc")


def _holding(_request: dict[str, Any], _fds: list[int], channel: Channel) -> dict[str, Any]:
    channel.say(f"{os.getpid()} {os.getppid()}")  # the supervisor and its fork server
    time.sleep(HOLD_S)
    return {}


def supervisor_memory(samples: int) -> dict[str, Any]:
    server = ForkServer(_holding)
    seen: list[dict[str, Any]] = []

    def say(line: str) -> None:  # runs here while the handler sleeps
        pid, server_pid = (int(x) for x in line.split())
        time.sleep(0.05)  # let the supervisor settle into its sleep
        seen.append({"supervisor": memory_kib(pid), "fork_server": memory_kib(server_pid)})

    try:
        for _ in range(samples):
            fresh_once(server, say)
    finally:
        server.close()
    return {
        "samples": samples,
        "median_kib": {
            who: {k: statistics.median(s[who][k] for s in seen) for k in seen[0][who]}
            for who in ("supervisor", "fork_server")
        },
        "readings_kib": seen,
    }


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):  # gone meanwhile
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def real_supervisor_memory(root: Path) -> dict[str, Any]:
    """The memory of a real attempt's supervisor (a job `sleep 0.5`, in an in-process tick),
    read once its `sleep` runs: this process -> fork server -> supervisor -> sleep."""
    (root / "work").mkdir(exist_ok=True)
    state = applied_state(root, "sleep", jobs(1, ("sleep", "0.5")))
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            Engine(FileStore(state), max_concurrent=1).tick()
        except BaseException as exc:
            errors.append(exc)

    before = set(_children(os.getpid()))
    thread = threading.Thread(target=tick)
    thread.start()
    found: dict[str, Any] | None = None
    deadline = time.monotonic() + 10
    while found is None and thread.is_alive() and time.monotonic() < deadline:
        for server in set(_children(os.getpid())) - before:
            for sup in _children(server):
                if _children(sup):  # its attempt (`sleep`) runs
                    time.sleep(0.05)
                    found = {"supervisor": memory_kib(sup), "fork_server": memory_kib(server)}
        time.sleep(0.01)
    thread.join()
    if errors:
        raise errors[0]
    if found is None:
        raise SystemExit("did not catch the real attempt's supervisor while it ran")
    return found


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--memory-samples", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()

    # what forks from this process runs before part 2's tick starts worker threads
    print(f"spawn round trip: {args.calls} calls after {args.warmup} warm-ups ...", flush=True)
    spawn = spawn_round_trip(args.calls, args.warmup)
    memory = supervisor_memory(args.memory_samples)
    this_process = memory_kib("self")
    with workspace(NAME) as root:
        print(f"real attempts: {args.jobs} jobs running `true` ...", flush=True)
        real = real_attempts(root, args.jobs, args.passes)
        real_memory = real_supervisor_memory(root)
        real["append_fdatasync"] = sync_latency(root, 50)

    sup, fork, true = (
        spawn["supervise"],
        spawn["bare_fork_exit_waitpid"],
        spawn["subprocess_run_true"],
    )
    print()
    print(f"spawn round trip (handler returns {{}} at once), {args.calls} calls, interleaved")
    print(f"  {'':32} {'median':>10} {'p95':>10}")
    for label, row in (
        ("supervise(), a new supervisor", sup),
        ("supervise(), reused (Lane)", spawn["supervise_reused"]),
        ("os.fork + _exit + waitpid", fork),
        ('subprocess.run(["true"])', true),
    ):
        print(f"  {label:32} {row['median_ms']:>7.2f} ms {row['p95_ms']:>7.2f} ms")
    print(f"  first supervise() call (forks the server): {spawn['first_call_ms']:.1f} ms")
    print(
        f"  a supervisor costs {sup['median_ms']:.2f} ms: about "
        f"{spawn['supervise_in_bare_forks']:.1f} bare forks, "
        f"{spawn['supervise_in_true_runs']:.2f}x starting `true`"
    )
    print(f"inside a real attempt ({args.jobs} jobs, max_concurrent 1, median of {args.passes})")
    print(
        f"  Engine.tick()               {ms(real['tick_median_s']):>10}  "
        f"{real['tick_ms_per_attempt']:.2f} ms per attempt"
    )
    print(
        f"  run_process(['true']) x{args.jobs}  {ms(real['run_process_median_s']):>10}  "
        f"{real['run_process_ms_per_call']:.2f} ms per call"
    )
    print(f"  engine + supervisor overhead: {real['overhead_ms_per_attempt']:.2f} ms per attempt")
    print(
        f"  CPU per attempt: the tick process {real['tick_process_cpu_ms_per_attempt']:.2f} ms "
        f"(supervisor and `true` not visible); run_process + `true` "
        f"{real['run_process_cpu_ms_per_call']:.2f} ms"
    )
    print(
        f"  (context: one 200-byte append + fdatasync here takes "
        f"{real['append_fdatasync']['median_ms']:.2f} ms, median of 50)"
    )
    print(f"memory, KiB ({args.memory_samples} supervisors, median; VmRSS / Pss / private)")

    def row(label: str, kib: dict[str, Any]) -> None:
        print(f"  {label:34} {kib['VmRSS']:>8} {kib['Pss']:>8} {kib['Private']:>8}")

    row("supervisor (handler sleeping)", memory["median_kib"]["supervisor"])
    row("its fork server", memory["median_kib"]["fork_server"])
    row("supervisor of a real attempt", real_memory["supervisor"])
    row("this process (the tick)", this_process)
    elapsed = time.perf_counter() - started
    print(f"({elapsed:.0f} s)")

    path = write_results(
        NAME,
        {
            "method": {
                "spawn_round_trip": (
                    "ForkServer whose handler returns {} at once; supervise(Lane(server), {}, "
                    "keep_fds=(), after_fork=no-op, settle=lambda r: True, stop=Event(), "
                    f"say=print to /dev/null, on_output=None) timed {args.calls} times after "
                    f"{args.warmup} warm-ups, interleaved with a bare os.fork()+os._exit(0)+"
                    'waitpid in this process and subprocess.run(["true"]); `supervise` with a '
                    "new Lane each call (a new supervisor, forked) and `supervise_reused` with "
                    "one Lane for every call (the idle supervisor takes the next request); the "
                    "first call (which forks the server) apart. Wall time, time.perf_counter()."
                ),
                "real_attempt": (
                    f"{args.jobs} jobs command ['true'], own lock key each, schedule every 1h, "
                    "applied with `python -m agentjobs apply`; one in-process "
                    "Engine(FileStore(S), max_concurrent=1).tick() over a fresh copy (all "
                    f"{args.jobs} attempts succeeded, checked in the records) against "
                    f"{args.jobs} run_process(['true'], cwd=temp dir, env=os.environ, "
                    "log_path=a new temp file each, timeout=60, silence_timeout=None, "
                    f"kill_grace=1) calls; {args.passes} alternating passes, medians. Wall "
                    "time: the tick's supervisors are children of its fork server. The "
                    "difference per attempt is the engine + supervisor overhead (claim, "
                    "records, settle, the tick's own preparation, the supervisor). Context: "
                    "this process's CPU during the tick (getrusage), and 50 appends of 200 "
                    "bytes + fdatasync in the same directory."
                ),
                "memory": (
                    f"while a handler sleeps {HOLD_S} s, VmRSS from /proc/PID/status and Rss, "
                    "Pss, Private_Clean+Private_Dirty from /proc/PID/smaps_rollup of the "
                    f"supervisor and its fork server ({args.memory_samples} supervisors, "
                    "median); once more for the supervisor of a real attempt (job `sleep "
                    "0.5`, in-process tick, read while `sleep` runs). Pss and private are "
                    "the honest figures for forked processes (pages shared copy-on-write)."
                ),
            },
            "spawn_round_trip": spawn,
            "real_attempt": real,
            "memory_kib": {
                "supervisor_handler_sleeping": memory,
                "real_attempt_supervisor": real_memory,
                "this_process_after_spawn_tests": this_process,
            },
            "elapsed_s": round(elapsed, 1),
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
