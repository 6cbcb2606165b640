"""What the benchmarks in bench/ share: running the CLI, timing with repeats, job files, results.

Every benchmark runs the installed `agentjobs` CLI as a real subprocess (never in-process), in a
temporary directory that is removed afterwards, and writes its figures to
`bench/results/NAME.json` together with the facts of the machine it ran on.
"""

from __future__ import annotations

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
from collections.abc import Iterator, Mapping, Sequence
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


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no AGENTJOBS_* settings leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTJOBS_")}
    env.update(extra)
    return env


def run(
    argv: Sequence[str], *, expect: int | Sequence[int] = 0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run once and check the exit code; on a surprise, show what the command printed."""
    expected = (expect,) if isinstance(expect, int) else tuple(expect)
    done = subprocess.run(
        list(argv), capture_output=True, text=True, env=clean_env(), cwd=cwd, check=False
    )
    if done.returncode not in expected:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise SystemExit(
            f"`{' '.join(argv)[:300]}` exited {done.returncode}, expected {expected}:\n{tail}"
        )
    return done


# -- timing ------------------------------------------------------------------------------------


def time_once(
    argv: Sequence[str], *, expect: int | Sequence[int] = 0, cwd: Path | None = None
) -> float:
    """Wall-clock seconds of one subprocess run, from spawn to exit (output captured)."""
    start = time.perf_counter()
    run(argv, expect=expect, cwd=cwd)
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
) -> dict[str, dict[str, Any]]:
    """Time several commands, interleaved (A B C A B C ...) so drift on the machine hits all alike.

    `warmup` untimed rounds first fill the OS page cache and the `__pycache__` directories.
    """
    for _ in range(warmup):
        for argv in commands.values():
            run(argv, expect=expect, cwd=cwd)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            samples[name].append(time_once(argv, expect=expect, cwd=cwd))
    return {name: summarize(values) for name, values in samples.items()}


def profile(argv_after_module: Sequence[str], *, top: int = 15) -> dict[str, Any]:
    """Run `python -m cProfile -m agentjobs ARGS` once; the top functions by cumulative time."""
    with tempfile.TemporaryDirectory(prefix="agentjobs-prof-") as tmp:
        out = Path(tmp) / "run.prof"
        run([PYTHON, "-m", "cProfile", "-o", str(out), "-m", "agentjobs", *argv_after_module])
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
_WRAPPERS = re.compile(
    r"^(~:0\(<built-in method builtins\.exec>\)|<string>:1\(<module>\)|<frozen runpy>"
    r"|agentjobs/__main__\.py|agentjobs/cli\.py:\d+\(main\)|click/)"
)


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
        job["labels"] = {"team": rng.choice(["web", "infra", "data"]), "tier": str(rng.randint(1, 3))}
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


def machine_facts() -> dict[str, Any]:
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
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": PYTHON,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "agentjobs_version": agentjobs.__version__,
        "agentjobs_commit": _repo_commit(),
    }


def _repo_commit() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


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
