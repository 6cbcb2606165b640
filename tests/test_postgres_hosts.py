"""Several runner hosts on one real PostgreSQL: exactly-once slots, lock keys that never overlap
across hosts, leases that expire, fencing, and a database that goes away mid-tick.

"Hosts" are separate processes with distinct host ids (`--host`), as on separate machines; they
share nothing but the database. The probe (`sh`) appends `start`/`end` lines with a nanosecond
timestamp (one clock on this machine) to one file, so overlapping intervals on one lock key are a
mutual-exclusion failure and a job with two `start` lines in one round fired twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import wait_for, write
from tests.test_engine_concurrency import _assert_no_overlap, _probe_runs

HOSTS = 4
JOBS = 200
KEYS = 10
ROUNDS = int(os.environ.get("AGENTJOBS_HOSTS_ROUNDS", "20"))
LEASE = 3.0  # seconds; short so expiry is quick to reach

# start and end lines, each one O_APPEND write; `beat` lines while it runs (SLEEP > 0)
PROBE = r"""
out=$1; key=$2; job=$3; sleep=$4
id="$key $job $AGENTJOBS_RUN_ID $AGENTJOBS_ATTEMPT"
echo "start $id $(date +%s%N)" >> "$out"
end=$(( $(date +%s) + ${sleep%.*} ))
while [ "$(date +%s)" -lt "$end" ]; do
    echo "beat $id $(date +%s%N)" >> "$out.beats"
    sleep 0.1
done
echo "end $id $(date +%s%N)" >> "$out"
"""

# One host: `agentjobs tick` in a loop, in-process (no interpreter start per tick), at the time
# in control/now, until control/stop exists. Exit codes other than 0/1 are written down.
HOST_LOOP = r"""
import sys, time
from pathlib import Path
from agentjobs.cli import main
url, jobs, host, control = sys.argv[1:5]
control = Path(control)
while not (control / "stop").exists():
    now = (control / "now").read_text().strip()
    code = main(["--state-dir", url, "--jobs-dir", jobs, "tick", "--host", host, "--now", now])
    if code not in (0, 1):
        with open(control / f"errors-{host}", "a") as f:
            f.write(f"tick exited {code}\n")
    time.sleep(0.01)
"""


@pytest.fixture(autouse=True)
def _bytecode(bytecode_cache: None) -> None:
    """Many real agentjobs processes: keep their bytecode (see conftest)."""


def _agentjobs(url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "agentjobs", "--state-dir", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _setup(
    tmp_path: Path,
    jobs_dir: Path,
    url: str,
    jobs: dict[str, str],
    sleep: float,
    extra: str = "",
    lease: float = LEASE,
) -> Path:
    """Job files (name -> lock key) running the probe; applied; returns the probe file."""
    probe = tmp_path / "probe.sh"
    probe.write_text(PROBE)
    out = tmp_path / "probe.txt"
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    write(
        jobs_dir / "agentjobs.yaml",
        f"""
        max_concurrent: 8
        lease: {lease:g}s
        """,
    )
    for name, key in jobs.items():
        argv = ["sh", str(probe), str(out), key, name, str(int(sleep))]
        write(
            jobs_dir / f"{name}.yaml",
            f"""
            schedule: {{every: 1h}}
            lock: {key}
            workdir: {json.dumps(str(workdir))}
            command: {json.dumps(argv)}
            {extra}
            """,
        )
    applied = _agentjobs(url, "--jobs-dir", str(jobs_dir), "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return out


def _spawn(url: str, jobs_dir: Path, *args: str) -> subprocess.Popen[str]:
    """`agentjobs ARGS` on the shared state, in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", url, "--jobs-dir", str(jobs_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _setup_slow(tmp_path: Path, jobs_dir: Path, url: str) -> Path:
    """One job on key k whose probe runs 30 s, retried at once (3 attempts)."""
    retries = "retry: {attempts: 3, backoff: {initial: 1s, max: 1s, jitter: 0s}}"
    return _setup(tmp_path, jobs_dir, url, {"slow": "k"}, 30, extra=retries)


def _records(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT data FROM agentjobs.records ORDER BY seq").fetchall()
    return [row[0] for row in rows]


def _lines(path: Path, kind: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith(kind + " ")]


def _host(url: str, jobs_dir: Path, host: str, control: Path) -> subprocess.Popen[str]:
    script = control / "host.py"
    if not script.exists():
        script.write_text(HOST_LOOP)
    return subprocess.Popen(
        [sys.executable, str(script), url, str(jobs_dir), host, str(control)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_hosts(control: Path, hosts: list[subprocess.Popen[str]]) -> list[str]:
    (control / "stop").write_text("")
    errors = []
    for proc in hosts:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"host exited {proc.returncode}: {err[-2000:]}")
        elif "Traceback" in err:
            errors.append(err[-2000:])
    return errors


def test_four_hosts_run_every_slot_exactly_once_and_never_overlap_a_key(
    tmp_path: Path, jobs_dir: Path, pg_url: str
) -> None:
    names = {f"job{i:03d}": f"key{i % KEYS}" for i in range(JOBS)}
    out = _setup(tmp_path, jobs_dir, pg_url, names, 0)
    control = tmp_path / "control"
    control.mkdir()
    base = time.time() + 3600  # every job is due in round 0 (`every` starts at apply)
    (control / "now").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base)))
    hosts = [_host(pg_url, jobs_dir, f"host{i}", control) for i in range(HOSTS)]
    began = time.monotonic()
    try:
        for number in range(ROUNDS):
            # `every: 1h` counts from each run's end, so rounds are 2h apart
            moment = base + number * 7200 + 1
            (control / "now").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment)))
            try:
                # the round is over when its attempts are recorded (not when the probes end:
                # a slot that comes while its job's last run is in flight is skipped, overlap)
                wait_for(lambda n=number: _finished(pg_url) >= JOBS * (n + 1), timeout=240)
            except AssertionError:
                raise AssertionError(
                    f"round {number} did not finish: {_diagnose(pg_url)}"
                ) from None
    finally:
        errors = _stop_hosts(control, hosts)
    elapsed = time.monotonic() - began
    assert errors == []
    assert not list(control.glob("errors-*")), [p.read_text() for p in control.glob("errors-*")]

    runs = _probe_runs(out)
    assert Counter(r.job for r in runs) == {name: ROUNDS for name in names}  # once per round
    assert all(r.attempt == 1 and r.key == names[r.job] for r in runs)
    _assert_no_overlap(runs)

    records = _records(pg_url)
    assert {r["event"] for r in records} == {"attempt_started", "attempt_finished"}
    finished = [r for r in records if r["event"] == "attempt_finished"]
    assert len(finished) == JOBS * ROUNDS
    assert {r["outcome"] for r in finished} == {"succeeded"}
    assert len({(r["job"], r["slot"]) for r in finished}) == JOBS * ROUNDS  # exactly once
    assert {(r["job"], r["run_id"]) for r in finished} == {(r.job, r.run_id) for r in runs}
    by_host = Counter(str(r["host"]) for r in finished)
    assert set(by_host) <= {f"host{i}" for i in range(HOSTS)}
    assert len(by_host) >= 2, by_host  # the work really was shared
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM agentjobs.queue").fetchone() == (0,)
        live = conn.execute(
            "SELECT count(*) FROM agentjobs.leases WHERE released_at IS NULL"
        ).fetchone()
        assert live == (0,)
    print(f"\n{JOBS * ROUNDS} runs on {HOSTS} hosts in {elapsed:.1f}s; by host {dict(by_host)}")


def _finished(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM agentjobs.records WHERE data->>'event' = 'attempt_finished'"
        ).fetchone()
    return int(row[0]) if row else 0


def _diagnose(url: str) -> str:
    with psycopg.connect(url) as conn:
        queue = conn.execute(
            "SELECT state, count(*), min(not_before), min(queued_at) FROM agentjobs.queue "
            "GROUP BY state"
        ).fetchall()
        leases = conn.execute(
            "SELECT key, host, expires_at > clock_timestamp() FROM agentjobs.leases "
            "WHERE released_at IS NULL"
        ).fetchall()
        jobs = conn.execute(
            "SELECT data->>'next_due', count(*) FROM agentjobs.jobs GROUP BY 1 ORDER BY 1"
        ).fetchall()
        events = conn.execute(
            "SELECT data->>'event', data->>'outcome', data->>'reason', data->>'time', count(*) "
            "FROM agentjobs.records GROUP BY 1, 2, 3, 4 ORDER BY 4"
        ).fetchall()
    return f"queue {queue}; live leases {leases}; next_due {jobs}; records {events}"


def _wait_started(url: str, job: str, attempt: int, timeout: float = 30) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def started() -> bool:
        found[:] = [
            r
            for r in _records(url)
            if r["event"] == "attempt_started" and r["job"] == job and r["attempt"] == attempt
        ]
        return bool(found)

    wait_for(started, timeout=timeout)
    return found[0]


def _alive(pid: int) -> bool:
    from agentjobs.runner import process_alive

    return process_alive(pid)  # a zombie (its runner frozen, not reaping) is not alive


def _tick_until(url: str, jobs_dir: Path, host: str, done: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the other host never finished the job"
        result = _agentjobs(url, "--jobs-dir", str(jobs_dir), "tick", "--host", host)
        assert result.returncode in (0, 1), result.stderr
        time.sleep(0.2)


def test_a_host_killed_mid_run_loses_its_lease_and_another_host_retries(
    tmp_path: Path, jobs_dir: Path, pg_url: str
) -> None:
    out = _setup_slow(tmp_path, jobs_dir, pg_url)
    first = _spawn(pg_url, jobs_dir, "tick", "--host", "a", "--now", _hours_ahead(1))
    started = _wait_started(pg_url, "slow", 1)
    child = int(started["child_pid"])
    assert _alive(child)
    # the host dies: its tick and the attempt's supervisor (which renews the lease)
    first.send_signal(signal.SIGKILL)
    os.kill(started["supervisor"]["pid"], signal.SIGKILL)
    first.communicate()
    killed_at = time.monotonic()
    # the fence saw its supervisor die and killed the attempt's process group at once
    wait_for(lambda: not _alive(child), timeout=5)
    assert time.monotonic() - killed_at < 3

    # Host b: the attempt is not `lost` while its lease lives, then it is, and b retries it.
    assert _lines(out, "end") == []
    write(jobs_dir / "slow.yaml", (jobs_dir / "slow.yaml").read_text().replace('"30"]', '"0"]'))
    assert _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "apply").returncode == 0

    def finished() -> list[dict[str, Any]]:
        return [r for r in _records(pg_url) if r["event"] == "attempt_finished"]

    _tick_until(pg_url, jobs_dir, "b", lambda: any(r["outcome"] == "succeeded" for r in finished()))
    done = finished()
    assert [(r["attempt"], r["outcome"], r["host"]) for r in done] == [
        (1, "lost", "b"),
        (2, "succeeded", "b"),
    ]
    assert done[0]["run_id"] == done[1]["run_id"]
    runs = _probe_runs(out)
    assert [(r.attempt, r.end is not None) for r in runs] == [(1, False), (2, True)]


def _hours_ahead(hours: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + hours * 3600 + 1))


def test_a_frozen_host_is_fenced_before_another_host_takes_the_key(
    tmp_path: Path, jobs_dir: Path, pg_url: str
) -> None:
    """SIGSTOP of a runner past its lease, then SIGCONT.

    What holds: the fence (a process of its own, not frozen with the runner) kills the attempt
    lease*2/3 after the runner's last successful renewal; another host can take the key only
    once the lease has expired (lease after that renewal, in database time). So the frozen
    host's agent is dead before the other host's run of the key starts. Woken, the frozen runner
    finds its lease gone, records nothing (the other host recorded the attempt `lost`), exits.
    """
    out = _setup_slow(tmp_path, jobs_dir, pg_url)
    frozen = _spawn(pg_url, jobs_dir, "tick", "--host", "a", "--now", _hours_ahead(1))
    started = _wait_started(pg_url, "slow", 1)
    child = int(started["child_pid"])
    wait_for(lambda: len(_lines(Path(f"{out}.beats"), "beat")) >= 3)
    # the host freezes (a VM paused, but not its fence): its tick and the attempt's supervisor
    supervisor = int(started["supervisor"]["pid"])
    frozen.send_signal(signal.SIGSTOP)
    os.kill(supervisor, signal.SIGSTOP)
    try:
        wait_for(lambda: not _alive(child), timeout=LEASE + 2)  # fenced within lease*2/3
        write(jobs_dir / "slow.yaml", (jobs_dir / "slow.yaml").read_text().replace('"30"]', '"1"]'))
        assert _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "apply").returncode == 0

        def retried() -> bool:
            return any(
                r["event"] == "attempt_finished" and r["attempt"] == 2 for r in _records(pg_url)
            )

        _tick_until(pg_url, jobs_dir, "b", retried)
    finally:
        os.kill(supervisor, signal.SIGCONT)
        frozen.send_signal(signal.SIGCONT)
    _stdout, stderr = frozen.communicate(timeout=30)
    assert "lost its lease" in stderr, stderr
    assert "Traceback" not in stderr

    runs = _probe_runs(out)
    first = [r for r in runs if r.attempt == 1]
    second = [r for r in runs if r.attempt == 2]
    assert len(first) == 1 and len(second) == 1 and second[0].end is not None
    first_beats = [
        int(line.split()[5])
        for line in _lines(Path(f"{out}.beats"), "beat")
        if line.split()[4] == "1"
    ]
    # the frozen host's agent showed its last sign of life before the other run began
    assert max(first_beats) < second[0].start
    finished = [r for r in _records(pg_url) if r["event"] == "attempt_finished"]
    assert Counter((r["run_id"], r["attempt"]) for r in finished) == {
        (finished[0]["run_id"], 1): 1,
        (finished[0]["run_id"], 2): 1,
    }  # nothing recorded twice
    assert [(r["attempt"], r["outcome"], r["host"]) for r in finished] == [
        (1, "lost", "b"),
        (2, "succeeded", "b"),
    ]


def test_a_database_restart_mid_run_is_ridden_out_and_a_down_database_fails_cleanly(
    tmp_path: Path, jobs_dir: Path, pg_url: str, pg_server: Any
) -> None:
    # a lease long enough to ride out the restart (renewals fail while the server is away)
    _setup(tmp_path, jobs_dir, pg_url, {"slow": "k"}, 2, lease=15)
    ticking = _spawn(pg_url, jobs_dir, "tick", "--host", "a", "--now", _hours_ahead(1))
    _wait_started(pg_url, "slow", 1)
    pg_server.restart()  # every connection of the tick breaks while its attempt runs
    stdout, stderr = ticking.communicate(timeout=60)
    assert ticking.returncode == 0, stdout + stderr
    assert "slow: attempt 1 succeeded" in stdout
    finished = [r for r in _records(pg_url) if r["event"] == "attempt_finished"]
    assert [(r["attempt"], r["outcome"]) for r in finished] == [(1, "succeeded")]

    pg_server.stop()
    try:
        down = _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "tick", "--now", _hours_ahead(3))
    finally:
        pg_server.start()
    assert down.returncode == 2
    # --now is hours ahead: its warning (issue 13), then the one line of the error
    warning, *lines = down.stderr.strip().splitlines()
    assert warning.startswith("agentjobs: warning: --now "), warning
    assert len(lines) == 1 and lines[0].startswith("agentjobs: error: cannot connect to the "), (
        lines
    )
    assert "Traceback" not in down.stderr
    # the next tick picks up from the stored state: the missed slot runs once
    again = _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "tick", "--now", _hours_ahead(3))
    assert again.returncode == 0, again.stderr
    finished = [r for r in _records(pg_url) if r["event"] == "attempt_finished"]
    assert [(r["attempt"], r["outcome"]) for r in finished] == [(1, "succeeded")] * 2
    assert len({r["run_id"] for r in finished}) == 2


def _status(url: str, jobs_dir: Path) -> dict[str, dict[str, Any]]:
    result = _agentjobs(url, "--jobs-dir", str(jobs_dir), "-o", "json", "status")
    assert result.returncode == 0, result.stderr
    return {row["job"]: row for row in json.loads(result.stdout)}


def _tick(url: str, jobs_dir: Path, *args: str) -> Any:
    result = _agentjobs(url, "--jobs-dir", str(jobs_dir), "tick", *args)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_runs_on_labels_and_a_missing_workdir_leave_the_item_for_another_host(
    tmp_path: Path, jobs_dir: Path, pg_url: str
) -> None:
    out = _setup(tmp_path, jobs_dir, pg_url, {"plain": "k1", "gpu": "k2", "far": "k3"}, 0)
    gpu = jobs_dir / "gpu.yaml"
    gpu.write_text(gpu.read_text() + "runs_on: [gpu]\n")
    far_dir = tmp_path / "elsewhere"
    far_dir.mkdir()
    far = jobs_dir / "far.yaml"
    far.write_text(far.read_text().replace(str(tmp_path / "work"), str(far_dir)))
    assert _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "apply").returncode == 0
    far_dir.rmdir()  # this "host" lacks the checkout the job runs in

    now = _hours_ahead(1)
    first = _tick(pg_url, jobs_dir, "--host", "a", "--now", now)
    assert "plain: attempt 1 succeeded" in first.stdout
    assert "gpu:" not in first.stdout and "far:" not in first.stdout
    status = _status(pg_url, jobs_dir)
    assert status["gpu"]["queued"] == 1 and status["far"]["queued"] == 1
    assert status["gpu"]["skipped_by"] == [
        {"host": "a", "reason": "host a lacks the label(s) gpu (runs_on)"}
    ]
    assert status["far"]["skipped_by"] == [
        {"host": "a", "reason": f"workdir {far_dir} does not exist on host a"}
    ]
    text = _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "status").stdout
    assert f"waiting: workdir {far_dir} does not exist on host a" in text

    far_dir.mkdir()  # host b has it, and the gpu label
    second = _tick(pg_url, jobs_dir, "--host", "b", "--labels", "gpu,big", "--now", now)
    assert "gpu: attempt 1 succeeded" in second.stdout
    assert "far: attempt 1 succeeded" in second.stdout
    status = _status(pg_url, jobs_dir)
    assert all(row["queued"] == 0 and row["skipped_by"] == [] for row in status.values())
    hosts = {r["job"]: r["host"] for r in _records(pg_url) if r["event"] == "attempt_finished"}
    assert hosts == {"plain": "a", "gpu": "b", "far": "b"}
    lines = _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "status").stdout.splitlines()
    assert lines[-1].startswith("hosts: a (active ") and ", b (big,gpu; active " in lines[-1]
    # attempt logs stay on the host that ran the attempt; elsewhere `logs` says where they are
    run = next(r["run_id"] for r in _records(pg_url) if r["job"] == "gpu")
    away = _agentjobs(pg_url, "logs", run, env={"AGENTJOBS_LOCAL_DIR": str(tmp_path / "c")})
    assert away.returncode == 2
    assert away.stderr.startswith(f"agentjobs: error: run {run}'s logs are on host b "), away.stderr
    assert len(_probe_runs(out)) == 3


def _most_at_once(intervals: list[tuple[int, int]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in points:  # an end sorts before a start at the same instant
        current += step
        most = max(most, current)
    return most


def test_max_concurrent_holds_across_the_cluster_and_per_host(
    tmp_path: Path, jobs_dir: Path, pg_url: str
) -> None:
    names = {f"job{i:02d}": f"key{i}" for i in range(12)}
    out = _setup(tmp_path, jobs_dir, pg_url, names, 1)
    write(
        jobs_dir / "agentjobs.yaml",
        f"""
        max_concurrent: 3
        max_concurrent_per_host: 1
        lease: {LEASE:g}s
        """,
    )
    assert _agentjobs(pg_url, "--jobs-dir", str(jobs_dir), "apply").returncode == 0
    control = tmp_path / "control"
    control.mkdir()
    (control / "now").write_text(_hours_ahead(1))
    hosts = [_host(pg_url, jobs_dir, f"h{i}", control) for i in range(4)]
    try:
        wait_for(lambda: _finished(pg_url) >= len(names), timeout=120)
    finally:
        errors = _stop_hosts(control, hosts)
    assert errors == []
    runs = [r for r in _probe_runs(out) if r.end is not None]
    assert len(runs) == len(names)
    host_of = {r["run_id"]: r["host"] for r in _records(pg_url) if r["event"] == "attempt_finished"}
    assert _most_at_once([(r.start, r.end) for r in runs if r.end]) == 3  # reached, never passed
    for host in set(host_of.values()):
        mine = [(r.start, r.end) for r in runs if r.end and host_of[r.run_id] == host]
        assert _most_at_once(mine) == 1, host
    assert len(set(host_of.values())) >= 3


def test_run_now_on_a_shared_store_says_which_host_holds_the_key(
    tmp_path: Path, jobs_dir: Path, pg_url: str
) -> None:
    _setup(tmp_path, jobs_dir, pg_url, {"slow": "k", "other": "k"}, 3)
    assert _agentjobs(pg_url, "pause", "other").returncode == 0
    busy = _spawn(pg_url, jobs_dir, "run", "slow", "--host", "a")
    started = _wait_started(pg_url, "slow", 1)
    held = _agentjobs(pg_url, "run", "other", "--host", "b")
    assert held.returncode == 0, held.stderr
    assert f"lock key k is held by run {started['run_id']} (job slow, attempt 1, host a" in (
        held.stderr
    )
    _, err = busy.communicate(timeout=60)
    assert busy.returncode == 0, err
    # a paused job still runs when a person asks for it (as on the file backend)
    ran = _agentjobs(pg_url, "run", "other", "--host", "b")
    assert ran.returncode == 0 and "other: succeeded" in ran.stderr, ran.stderr
    finished = [r for r in _records(pg_url) if r["event"] == "attempt_finished"]
    assert [(r["job"], r["host"], r["trigger"]) for r in finished] == [
        ("slow", "a", "manual"),
        ("other", "b", "manual"),
    ]


def test_a_database_away_longer_than_the_lease_fences_the_attempt_and_records_interrupted(
    tmp_path: Path, jobs_dir: Path, pg_url: str, pg_server: Any
) -> None:
    _setup(tmp_path, jobs_dir, pg_url, {"slow": "k"}, 30)
    ticking = _spawn(pg_url, jobs_dir, "tick", "--host", "a", "--now", _hours_ahead(1))
    started = _wait_started(pg_url, "slow", 1)
    child = int(started["child_pid"])
    pg_server.stop()
    try:
        # renewals fail: the fence kills the agent lease*2/3 after the last renewal
        wait_for(lambda: not _alive(child), timeout=LEASE + 2)
    finally:
        pg_server.start()

    def recorded() -> list[dict[str, Any]]:
        return [r for r in _records(pg_url) if r["event"] == "attempt_finished"]

    wait_for(recorded, timeout=30)  # the result, kept in memory, is recorded once it is back
    ticking.send_signal(signal.SIGTERM)  # (the tick goes on to retry it: stop it there)
    _, stderr = ticking.communicate(timeout=60)
    assert "Traceback" not in stderr
    first = recorded()[0]
    assert (first["attempt"], first["outcome"], first["host"]) == (1, "interrupted", "a")
    assert first["error"].startswith("the lease could not be renewed"), first["error"]
    assert Counter(r["attempt"] for r in recorded())[1] == 1  # nothing recorded twice
