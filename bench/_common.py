"""What the benchmarks in bench/ share: running the CLI, timing with repeats, job files, results.

Every benchmark runs the installed `agentjobs` CLI as a real subprocess (never in-process), in a
temporary directory that is removed afterwards, and writes its figures to
`bench/results/NAME.json` together with the facts of the machine it ran on.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
JOB_SCHEMA = REPO_ROOT / "schema" / "job.schema.json"

PYTHON = sys.executable
AGENTJOBS_MODULE = [PYTHON, "-m", "agentjobs"]


# -- the CLI -----------------------------------------------------------------------------------


def console_script() -> str:
    """The `agentjobs` console script beside this interpreter (not a pyenv/asdf shim on PATH)."""
    beside = Path(PYTHON).parent / "agentjobs"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("agentjobs")
    if found is None:
        raise SystemExit("the agentjobs console script is not installed: pip install -e .")
    return found


# Users run agentjobs with its bytecode compiled (pip compiles on install; otherwise the first run
# writes __pycache__). An environment with PYTHONDONTWRITEBYTECODE=1 and an editable install would
# recompile every agentjobs module on every run and charge that to start-up. So subprocesses keep
# their bytecode in a private cache, removed at exit; nothing is written into the source tree.
_PYCACHE = tempfile.mkdtemp(prefix="agentjobs-bench-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, True)
BYTECODE_NOTE = (
    "subprocesses run with PYTHONPYCACHEPREFIX set to a private temporary directory and "
    "PYTHONDONTWRITEBYTECODE unset, so every module is compiled once (in warm-up runs) and "
    "then loaded from bytecode, as after a normal install"
)


def clean_env(*, bytecode_cache: bool = True) -> dict[str, str]:
    """The environment for a subprocess: no AGENTJOBS_* settings leaking in from the caller,
    and (unless asked otherwise) a bytecode cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTJOBS_")}
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def run(
    argv: Sequence[str],
    *,
    expect: int | Sequence[int] = 0,
    cwd: Path | None = None,
    bytecode_cache: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run once and check the exit code; on a surprise, show what the command printed."""
    expected = (expect,) if isinstance(expect, int) else tuple(expect)
    env = clean_env(bytecode_cache=bytecode_cache)
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if done.returncode not in expected:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise SystemExit(
            f"`{' '.join(argv)[:300]}` exited {done.returncode}, expected {expected}:\n{tail}"
        )
    return done


# -- timing ------------------------------------------------------------------------------------


def time_once(
    argv: Sequence[str],
    *,
    expect: int | Sequence[int] = 0,
    cwd: Path | None = None,
    bytecode_cache: bool = True,
) -> float:
    """Wall-clock seconds of one subprocess run, from spawn to exit (output captured)."""
    start = time.perf_counter()
    run(argv, expect=expect, cwd=cwd, bytecode_cache=bytecode_cache)
    return time.perf_counter() - start


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median and spread of timing samples, in seconds."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "mean_s": statistics.fmean(samples),
        "stdev_s": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "runs": len(samples),
        "samples_s": list(samples),
    }


def compare(
    commands: Mapping[str, Sequence[str]],
    *,
    repeats: int,
    warmup: int = 1,
    expect: int | Sequence[int] = 0,
    cwd: Path | None = None,
    uncached: Collection[str] = (),
) -> dict[str, dict[str, Any]]:
    """Time several commands, interleaved (A B C A B C ...) so drift on the machine hits all alike.

    `warmup` untimed rounds first fill the OS page cache and the bytecode cache; the commands
    named in `uncached` run without a bytecode cache (every module compiled on every run).
    """
    for _ in range(warmup):
        for name, argv in commands.items():
            run(argv, expect=expect, cwd=cwd, bytecode_cache=name not in uncached)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            cached = name not in uncached
            samples[name].append(time_once(argv, expect=expect, cwd=cwd, bytecode_cache=cached))
    return {name: summarize(values) for name, values in samples.items()}


# `python -m cProfile` swallows the exit code (it catches SystemExit), so profile `main` ourselves:
# imports included, and a failing command still fails the benchmark.
_PROFILED_MAIN = (
    "import cProfile, sys\n"
    "profiler = cProfile.Profile()\n"
    "profiler.enable()\n"
    "from agentjobs.cli import main\n"
    "code = main(sys.argv[2:])\n"
    "profiler.disable()\n"
    "profiler.dump_stats(sys.argv[1])\n"
    "sys.exit(code)\n"
)


def profile(args: Sequence[str], *, top: int = 25) -> dict[str, Any]:
    """Run `agentjobs ARGS` once under cProfile; the top functions by cumulative and self time.

    cProfile slows pure-Python code down 2-4x; read the figures as shares, not as wall time.
    """
    with tempfile.TemporaryDirectory(prefix="agentjobs-prof-") as tmp:
        out = Path(tmp) / "run.prof"
        run([PYTHON, "-c", _PROFILED_MAIN, str(out), *args])
        stats = pstats.Stats(str(out))
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short_path(file)}:{line}({func})",
                "calls": calls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
            }
        )
    total = stats.total_tt  # type: ignore[attr-defined]

    def interesting(row: dict[str, Any]) -> bool:
        # drop the wrappers every call goes through (the module runner, click's dispatch)
        name = row["function"]
        return not _WRAPPERS.match(name)

    by_cum = sorted(filter(interesting, rows), key=lambda r: r["cumtime_s"], reverse=True)
    by_tot = sorted(rows, key=lambda r: r["tottime_s"], reverse=True)
    return {"total_s": round(total, 4), "by_cumulative": by_cum[:top], "by_self": by_tot[:top]}


# The call chain every command goes through: the module runner, `main`, click's dispatch.
_WRAPPERS = re.compile(r"^(agentjobs/cli\.py:\d+\(main\)|click/)")


def _short_path(file: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# -- job files ---------------------------------------------------------------------------------

_CRONS = [
    "0 2 * * *",
    "30 2 * * *",
    "*/15 * * * *",
    "0 */4 * * *",
    "30 6 * * 1-5",
    "0 6 * * 0",
    "15 3 1 * *",
    "45 23 * * 5",
    "@daily",
    "@hourly",
    "@weekly",
]
_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
_EVERY = ["90s", "30m", "1h", "8h", "1h30m", "1d", "PT2H", "12h"]
_AGENTS = ["claude", "codex", "gemini", "aider"]
_PROMPTS = [
    "Run the tests and fix any failures.",
    "Update the dependencies, run the tests, and open a summary of what changed.",
    "Refresh the API docs from the docstrings; keep the style of the existing pages.",
    "Triage the newest open issues and label them.",
    "Find flaky tests in the last week of CI logs and quarantine them with a note.",
]
_COMMANDS = [
    ["make", "test"],
    ["python3", "-c", "print('hello')"],
    ["pytest", "-q", "-x"],
    ["npm", "run", "build"],
    ["./scripts/nightly.sh", "--quiet"],
]
_OUTCOMES = ["failed", "timeout", "silence", "lost", "rate_limited", "verify_failed"]


def job_document(i: int, rng: random.Random, workdirs: Sequence[str]) -> dict[str, Any]:
    """One valid, varied job (named job-NNNNN); `needs` point only at lower numbers: no cycles."""
    job: dict[str, Any] = {"name": f"job-{i:05d}", "description": f"Benchmark job number {i}."}
    if rng.random() < 0.5:
        job["priority"] = rng.choice(["high", "normal", "low"])
    if rng.random() < 0.2:
        job["labels"] = {
            "team": rng.choice(["web", "infra", "data"]),
            "tier": str(rng.randint(1, 3)),
        }
    job["workdir"] = rng.choice(workdirs)
    if rng.random() < 0.1:
        job["lock"] = f"shared-{rng.randint(0, 9)}"

    kind = rng.random()
    if kind < 0.45:
        schedule: dict[str, Any] = {"cron": rng.choice(_CRONS)}
        if rng.random() < 0.5:
            schedule["timezone"] = rng.choice(_ZONES)
        if rng.random() < 0.4:
            schedule["catchup"] = rng.choice(["skip", "once", "all"])
        if rng.random() < 0.3:
            schedule["jitter"] = rng.choice(["30s", "5m", "10m"])
        job["schedule"] = schedule
    elif kind < 0.80:
        job["schedule"] = {"every": rng.choice(_EVERY)}
        if rng.random() < 0.3:
            job["schedule"]["jitter"] = "1m"
    elif kind < 0.95:
        moment = f"{rng.randint(2031, 2035)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        schedule = {"at": f"{moment}T{rng.randint(0, 23):02d}:{rng.choice(['00', '30'])}"}
        if rng.random() < 0.5:
            schedule["timezone"] = rng.choice(_ZONES)
        job["schedule"] = schedule
    # else: no schedule; runs only when triggered (`run`, `needs`)

    if rng.random() < 0.5:
        agent: dict[str, Any] = {"kind": rng.choice(_AGENTS), "prompt": rng.choice(_PROMPTS)}
        if rng.random() < 0.4:
            agent["max_turns"] = rng.randint(5, 50)
        if rng.random() < 0.3:
            agent["permission_mode"] = rng.choice(["default", "acceptEdits", "plan"])
        if rng.random() < 0.3:
            agent["allowed_tools"] = ["Read", "Edit", "Bash(make test)"]
        job["agent"] = agent
    elif rng.random() < 0.1:
        job["command"] = "echo start && make check"
        job["shell"] = True
    else:
        job["command"] = list(rng.choice(_COMMANDS))

    if rng.random() < 0.6:
        job["timeout"] = rng.choice(["30m", "1h", "2h"])
        if rng.random() < 0.5:
            job["silence_timeout"] = rng.choice(["5m", "10m"])
    if rng.random() < 0.2:
        job["kill_grace"] = "15s"
    if rng.random() < 0.5:
        retry: dict[str, Any] = {"attempts": rng.randint(1, 5)}
        if rng.random() < 0.6:
            retry["backoff"] = {"initial": "1m", "max": rng.choice(["10m", "30m", "1h"])}
            if rng.random() < 0.5:
                retry["backoff"]["multiplier"] = rng.choice([1.5, 2, 3])
        if rng.random() < 0.3:
            retry["retry_on"] = [rng.choice(_OUTCOMES), rng.randint(1, 125)]
        if rng.random() < 0.3:
            retry["never_on"] = [{"output": "credit balance is too low"}, "verify_failed"]
        if "agent" in job and rng.random() < 0.5:
            retry["corrective"] = rng.random() < 0.5
        job["retry"] = retry
    if rng.random() < 0.3:
        job["env"] = {"CI": "1", "LOG_LEVEL": rng.choice(["debug", "info"]), "N": str(i)}
    if rng.random() < 0.1:
        job["secrets"] = ["GITHUB_TOKEN"]
    if rng.random() < 0.2:
        job["overlap"] = rng.choice(["skip", "queue"])
    if i > 0 and rng.random() < 0.3:
        job["needs"] = sorted({f"job-{rng.randrange(i):05d}" for _ in range(rng.randint(1, 3))})
    if rng.random() < 0.1:
        job["verify"] = ["make", "check"]
    if rng.random() < 0.1:
        job["notify"] = {"events": ["failed", "dead_lettered"], "command": ["logger", "-t", "aj"]}
    if rng.random() < 0.05:
        job["enabled"] = False
    return job


def write_jobs(jobs_dir: Path, count: int, *, seed: int = 1) -> list[Path]:
    """Write `count` valid job files (one job each) into `jobs_dir`, plus the work directories
    they name (beside `jobs_dir`), so validation has nothing to warn about either."""
    rng = random.Random(seed)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    workdirs = []
    for n in range(8):
        (jobs_dir.parent / "work" / f"repo-{n}").mkdir(parents=True, exist_ok=True)
        workdirs.append(f"../work/repo-{n}")
    paths = []
    for i in range(count):
        doc = job_document(i, rng, workdirs)
        path = jobs_dir / f"{doc['name']}.yaml"
        body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
        path.write_text(f"# generated by bench/_common.py (seed {seed})\n{body}")
        paths.append(path)
    return paths


@contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards however the benchmark ends."""
    with tempfile.TemporaryDirectory(prefix=f"agentjobs-bench-{prefix}-") as tmp:
        yield Path(tmp)


# -- results -----------------------------------------------------------------------------------


_LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)


def machine_facts() -> dict[str, Any]:
    """Where and on what the figures were measured; load averages say how busy the machine was."""
    import agentjobs

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15_at_start": [round(x, 2) for x in _LOAD_AT_START],
        "loadavg_1_5_15_at_end": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": PYTHON,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "agentjobs_version": agentjobs.__version__,
        "agentjobs_commit": _git("rev-parse", "HEAD") or None,
        # the benchmarks measure the working tree: say whether it differs from that commit
        "agentjobs_tree_modified": bool(_git("status", "--porcelain", "--", "agentjobs")),
    }


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def write_results(name: str, results: Mapping[str, Any]) -> Path:
    """`bench/results/NAME.json`: the machine facts, then the benchmark's own figures."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    body = {"benchmark": name, "machine": machine_facts(), **results}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


# -- `python -X importtime` --------------------------------------------------------------------


def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """`-X importtime` lines (`import time: SELF | CUMULATIVE | <indent>NAME`), in output order.

    Depth comes from the indent (two spaces per level); a module's children come before it.
    """
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        stripped = name.lstrip(" ")
        rows.append(
            {
                "module": stripped.strip(),
                "depth": (len(name) - len(stripped) - 1) // 2,
                "self_us": int(self_us),
                "cumulative_us": int(cumulative_us),
            }
        )
    return rows


def import_chain(rows: Sequence[Mapping[str, Any]], index: int) -> list[str]:
    """Who imported `rows[index]`: its parents outwards (a parent is the next row, later in the
    output, with a smaller depth), e.g. ['yaml', 'agentjobs.yamlfile', 'agentjobs.validate']."""
    chain = [rows[index]["module"]]
    depth = rows[index]["depth"]
    for row in rows[index + 1 :]:
        if row["depth"] < depth:
            chain.append(row["module"])
            depth = row["depth"]
            if depth == 0:
                break
    return chain


def importtime_report(
    argv: Sequence[str],
    *,
    runs: int,
    forbidden: Sequence[str],
    cwd: Path | None = None,
    over_us: int = 5000,
) -> dict[str, Any]:
    """Run `argv` (which must include `-X importtime`) `runs` times: each module's median self and
    cumulative microseconds, the modules over `over_us` cumulative, and which of `forbidden`
    (top-level package names) were imported, each with the chain of modules that imported it."""
    per_run = [parse_importtime(run(argv, cwd=cwd).stderr) for _ in range(runs)]
    order = per_run[0]  # the import order is the same every run
    by_module: dict[str, list[Mapping[str, Any]]] = {}
    for rows in per_run:
        for row in rows:
            by_module.setdefault(row["module"], []).append(row)
    modules = [
        {
            "module": row["module"],
            "depth": row["depth"],
            "self_us": statistics.median(r["self_us"] for r in by_module[row["module"]]),
            "cumulative_us": statistics.median(
                r["cumulative_us"] for r in by_module[row["module"]]
            ),
        }
        for row in order
    ]

    def banned(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    chains = {}
    for i, row in enumerate(order):
        top = row["module"].split(".", 1)[0]
        if banned(row["module"]) and top not in chains:
            # the outermost module of that package, then whoever imported it
            chain = import_chain(order, i)
            while len(chain) > 1 and banned(chain[1]):
                chain.pop(0)
            chains[top] = chain
    return {
        "command": " ".join(a if a != PYTHON else "python" for a in argv),
        "runs": runs,
        "modules_imported": len(order),
        "total_self_us": sum(m["self_us"] for m in modules),
        f"over_{over_us // 1000}ms_cumulative": [
            m for m in modules if m["cumulative_us"] > over_us
        ],
        "forbidden_checked": list(forbidden),
        "forbidden_imported": sorted(chains),
        "forbidden_imported_via": chains,
        "agentjobs_modules": [m["module"] for m in order if m["module"].startswith("agentjobs")],
    }


def print_importtime(report: Mapping[str, Any], over_us: int = 5000) -> None:
    print(
        f"  -X importtime (median of {report['runs']}): {report['modules_imported']} modules, "
        f"{report['total_self_us'] / 1000:.1f} ms in module bodies; over {over_us // 1000} ms "
        "cumulative:"
    )
    for m in report[f"over_{over_us // 1000}ms_cumulative"]:
        indent = "  " * m["depth"]
        print(
            f"    {m['cumulative_us'] / 1000:7.1f} ms cum {m['self_us'] / 1000:6.1f} ms self  "
            f"{indent}{m['module']}"
        )
    print(f"  agentjobs modules imported: {', '.join(report['agentjobs_modules'])}")
    if report["forbidden_imported"]:
        print("  FORBIDDEN modules imported:")
        for top, chain in report["forbidden_imported_via"].items():
            print(f"    {top}: imported by {' <- '.join(chain[1:]) or '(top level)'}")
    else:
        print(f"  none of {', '.join(report['forbidden_checked'])} imported: OK")


# -- state directories -------------------------------------------------------------------------


def write_job_docs(jobs_dir: Path, docs: Sequence[Mapping[str, Any]]) -> list[Path]:
    """One YAML file per job document (`NAME.yaml`), for jobs shaped by the benchmark itself."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in docs:
        path = jobs_dir / f"{doc['name']}.yaml"
        body = yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=None, width=100)
        path.write_text(body)
        paths.append(path)
    return paths


def apply_jobs(jobs_dir: Path, state: Path, *, now: str | None = None) -> str:
    """`agentjobs apply` (as if at `now`, an ISO time, when given); returns its summary line."""
    extra = ["--now", now] if now else []
    done = run(
        [*AGENTJOBS_MODULE, "--jobs-dir", str(jobs_dir), "--state-dir", str(state), "apply", *extra]
    )
    return done.stdout.strip().splitlines()[-1]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its (size, mtime_ns): compare two to see what changed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def changed_files(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def read_records(state: Path) -> list[dict[str, Any]]:
    """Every run record under `<state>/records/` (the JSONL day files records.py writes)."""
    out = []
    for path in sorted((state / "records").glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


# -- profiling an in-process tick ----------------------------------------------------------------


def stats_rows(
    stats: pstats.Stats, *, top: int = 15, skip: re.Pattern[str] | None = None
) -> dict[str, Any]:
    """The top functions of a pstats.Stats by cumulative and by self time."""
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short_path(file)}:{line}({func})",
                "calls": calls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
            }
        )
    kept = [r for r in rows if not (skip and skip.search(r["function"]))]
    by_cum = sorted(kept, key=lambda r: r["cumtime_s"], reverse=True)
    by_tot = sorted(kept, key=lambda r: r["tottime_s"], reverse=True)
    return {"by_cumulative": by_cum[:top], "by_self": by_tot[:top]}


# Waiting, not working: the main thread joining its workers, workers' threading plumbing.
_THREAD_WAITS = re.compile(
    r"\(<method 'acquire' of '_thread\.lock' objects>\)|threading\.py:\d+\((join|_wait_for_tstate_lock|wait|_bootstrap|_bootstrap_inner|run)\)|engine\.py:\d+\((tick|_run_queue)\)"
)


def profile_engine_tick(
    state: Path, *, max_concurrent: int | None = None, top: int = 20, now: str | None = None
) -> dict[str, Any]:
    """One `Engine(FileStore(state)).tick()` in this process under cProfile, worker threads
    included (each worker profiles itself; the stats are merged).

    cProfile slows pure-Python code 2-4x; read the figures as shares, not as wall time. In the
    merged stats the workers' times add up (two workers: up to twice the wall time).
    """
    import cProfile

    from agentjobs.engine import Engine
    from agentjobs.store.files import FileStore

    worker_profiles: list[cProfile.Profile] = []

    class ProfiledEngine(Engine):
        def _worker(self, results: list[Any]) -> None:
            prof = cProfile.Profile()
            prof.enable()
            try:
                super()._worker(results)
            finally:
                prof.disable()
                worker_profiles.append(prof)

    from agentjobs.clock import Clock

    clock = Clock(start=datetime.fromisoformat(now)) if now else Clock()  # `now`: as `--now`
    engine = ProfiledEngine(FileStore(state), clock=clock, max_concurrent=max_concurrent)
    main_thread = cProfile.Profile()
    start = time.perf_counter()
    main_thread.enable()
    result = engine.tick()
    main_thread.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(main_thread)
    for prof in worker_profiles:
        stats.add(prof)
    return {
        "wall_s_under_profiler": round(wall, 3),
        "attempts": len(result.attempts),
        "workers_profiled": len(worker_profiles),
        "note": "cProfile, main thread and worker threads merged; thread waits (join, lock "
        "acquire) left out of the lists",
        **stats_rows(stats, top=top, skip=_THREAD_WAITS),
    }


def print_profile(where: Mapping[str, Any], rows: int = 15) -> None:
    print("    by cumulative time:")
    for row in where["by_cumulative"][:rows]:
        print(f"      {row['cumtime_s']:8.3f} s  {row['calls']:>8} calls  {row['function']}")
    print("    by self time:")
    for row in where["by_self"][:rows]:
        print(f"      {row['tottime_s']:8.3f} s  {row['calls']:>8} calls  {row['function']}")


# -- a running daemon ----------------------------------------------------------------------------


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in KiB, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@contextmanager
def daemon_process(
    state: Path, *, cwd: Path, extra: Sequence[str] = (), startup_timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m agentjobs --state-dir STATE daemon` as a subprocess, yielded once it has said
    it started; its stderr goes to `cwd/daemon.stderr`. Killed if still running on the way out
    (stop it yourself with `stop_daemon` to check the exit status)."""
    log = cwd / "daemon.stderr"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*AGENTJOBS_MODULE, "--state-dir", str(state), "daemon", *extra],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=clean_env(),
            cwd=cwd,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while b"daemon: started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_daemon(proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> dict[str, Any]:
    """SIGTERM, then wait: the exit status and how long the daemon took to stop."""
    start = time.perf_counter()
    proc.terminate()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        return {"exit_code": code, "stopped_s": None, "needed_sigkill": True}
    return {"exit_code": code, "stopped_s": time.perf_counter() - start, "needed_sigkill": False}


class RecordCounter:
    """Counts one event in `<state>/records/*.jsonl` as they grow, reading only the new bytes."""

    def __init__(self, state: Path, event: str = "attempt_finished") -> None:
        self.records = state / "records"
        self.needle = f'"event":"{event}"'.encode()
        self.offsets: dict[Path, int] = {}
        self.count = 0

    def update(self) -> int:
        for path in sorted(self.records.glob("*.jsonl")):
            start = self.offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(start)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only; a half-written one waits
            self.count += chunk[:end].count(self.needle)
            self.offsets[path] = start + end
        return self.count
