"""The PostgreSQL backend on a real server: serialized migrations, exactly-once slots enforced
by the database, `history --output jsonl` in the file backend's format, `state export`/`import`
between backends, one-line connection errors without passwords, and a file backend that never
imports psycopg.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from agentjobs.errors import StateUnavailableError, UserError
from agentjobs.records import encode
from agentjobs.store.postgres import (
    MIGRATION_LOCK,
    MIGRATIONS,
    DatabaseLost,
    Lease,
    PostgresStore,
)
from tests.conftest import REPO, run_agentjobs, wait_for, write

J = "repo/jobs.d"
T0 = "2026-11-23T22:00:00Z"  # apply
SLOT0 = "2026-11-23T22:00:00+00:00"  # `every` runs first at apply time
T1 = "2026-11-23T23:00:05Z"  # every: 1h is due: ok succeeds, bad fails attempt 1
T2 = "2026-11-23T23:02:05Z"  # bad's retry (1m backoff) fails: dead letter
T3 = "2026-11-24T00:30:00Z"  # the next day: ok again, bad attempt 1 of its next slot


@pytest.fixture(autouse=True)
def _bytecode(bytecode_cache: None) -> None:
    """Real agentjobs processes: keep their bytecode (see conftest)."""


@pytest.fixture
def local_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This host's files with a shared database (attempt logs), for in-process and child runs."""
    folder = tmp_path / "local"
    monkeypatch.setenv("AGENTJOBS_LOCAL_DIR", str(folder))
    return folder


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentjobs", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        done.append((proc.returncode, out, err))
    return done


def _waiting_on_locks(url: str, count: int) -> None:
    """Wait until `count` other connections to the database are blocked on a lock."""

    def blocked() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            ).fetchone()
        return row is not None and row[0] >= count

    wait_for(blocked, timeout=20)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _jobs(jobs_dir: Path, backoff: str = "1m") -> None:
    """ok: succeeds; bad: fails (exit 3), fails its retry `backoff` later, is dead-lettered."""
    write(jobs_dir / "agentjobs.yaml", "max_concurrent: 1\n")
    write(
        jobs_dir / "ok.yaml",
        """
        schedule: {every: 1h}
        command: [sh, -c, "echo all good ✓"]
        """,
    )
    write(
        jobs_dir / "bad.yaml",
        f"""
        schedule: {{every: 1h}}
        command: [sh, -c, "echo broken >&2; exit 3"]
        retry: {{attempts: 2, backoff: {{initial: {backoff}, jitter: 0s}}}}
        """,
    )


# -- 1. migrations ---------------------------------------------------------------------------


def test_concurrent_migrations_apply_once_and_a_newer_schema_is_refused(
    pg_url: str, local_dir: Path
) -> None:
    # Hold the migration lock until all four processes queue on it: they really race.
    holder = psycopg.connect(pg_url)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    procs = [_spawn("--state-dir", pg_url, "db", "migrate") for _ in range(4)]
    try:
        _waiting_on_locks(pg_url, 4)
    finally:
        holder.rollback()
        holder.close()
    results = _finish(procs)
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    version = len(MIGRATIONS)
    outs = sorted(out for _, out, _ in results)
    applied = f"applied migration(s) {', '.join(map(str, range(1, version + 1)))} to {pg_url}; "
    assert outs == sorted(
        [f"{applied}schema version {version}\n"]
        + [f"{pg_url} is up to date (schema version {version})\n"] * 3
    )
    assert all(err == "" for _, _, err in results)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT version, count(*) FROM agentjobs.migrations GROUP BY version ORDER BY version"
        ).fetchall()
    assert rows == [(n, 1) for n in range(1, version + 1)]

    again = run_agentjobs("--state-dir", pg_url, "db", "migrate")
    assert (again.returncode, again.stdout) == (
        0,
        f"{pg_url} is up to date (schema version {version})\n",
    )

    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO agentjobs.migrations (version) VALUES (999)")
    for verb in (("db", "migrate"), ("status",)):
        newer = run_agentjobs("--state-dir", pg_url, *verb)
        assert newer.returncode == 2, newer
        assert newer.stdout == ""
        assert _one_error_line(newer.stderr) == (
            f"agentjobs: error: database {pg_url} has agentjobs schema version 999, newer than "
            f"this agentjobs understands ({version}); upgrade agentjobs"
        )


# -- 2. exactly once -------------------------------------------------------------------------


def test_the_queue_refuses_a_second_item_for_a_job_and_slot(
    cli, jobs_dir: Path, pg_url: str, local_dir: Path
) -> None:
    _jobs(jobs_dir, backoff="1h")
    assert cli("--jobs-dir", J, "--state-dir", pg_url, "apply", "--now", T0).code == 0
    assert cli("--state-dir", pg_url, "tick", "--now", T1).code == 1  # bad waits for its retry
    copy = (
        "INSERT INTO agentjobs.queue "
        "(id, job, slot, state, rank, queued_at, not_before, lock_key, data) "
        "SELECT %s, job, {slot}, state, rank, queued_at, not_before, lock_key, data "
        "FROM agentjobs.queue WHERE id = %s"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, job, slot, state FROM agentjobs.queue").fetchall()
        assert len(rows) == 1 and rows[0][1:] == ("bad", SLOT0, "queued"), rows
        first = rows[0][0]
        with pytest.raises(psycopg.errors.UniqueViolation, match="queue_job_slot"):
            conn.execute(copy.format(slot="slot"), ("another-id", first))
        # the index is on (job, slot): another slot, or no slot (a manual run), goes in
        conn.execute(copy.format(slot="'2026-11-24T00:00:00+00:00'"), ("next-slot", first))
        conn.execute(copy.format(slot="NULL"), ("manual-1", first))
        conn.execute(copy.format(slot="NULL"), ("manual-2", first))
        count = conn.execute("SELECT count(*) FROM agentjobs.queue").fetchone()
    assert count == (4,)


def test_two_ticks_at_the_same_moment_run_each_due_slot_once(
    jobs_dir: Path, pg_url: str, local_dir: Path
) -> None:
    write(jobs_dir / "agentjobs.yaml", "max_concurrent: 4\n")
    names = ["a", "b", "c"]
    for name in names:
        write(jobs_dir / f"{name}.yaml", "schedule: {every: 1h}\ncommand: [sh, -c, 'exit 0']\n")
    applied = run_agentjobs("--jobs-dir", J, "--state-dir", pg_url, "apply", "--now", T0)
    assert applied.returncode == 0, applied.stderr
    for now in (T1, T3):
        # both ticks queue on the state lock we hold, then go at once
        holder = psycopg.connect(pg_url)
        holder.execute("SELECT 1 FROM agentjobs.meta WHERE id = 1 FOR UPDATE")
        procs = [
            _spawn("--state-dir", pg_url, "tick", "--host", host, "--now", now)
            for host in ("h1", "h2")
        ]
        try:
            _waiting_on_locks(pg_url, 2)
        finally:
            holder.rollback()
            holder.close()
        results = _finish(procs)
        assert [code for code, _, _ in results] == [0, 0], results
    with psycopg.connect(pg_url) as conn:
        records = [r[0] for r in conn.execute("SELECT data FROM agentjobs.records ORDER BY seq")]
        queued = conn.execute("SELECT count(*) FROM agentjobs.queue").fetchone()
    finished = Counter((r["job"], r["slot"]) for r in records if r["event"] == "attempt_finished")
    started = Counter((r["job"], r["slot"]) for r in records if r["event"] == "attempt_started")
    assert set(finished.values()) == {1}, finished
    assert started == finished
    assert sorted(finished) == sorted(
        (name, slot) for name in names for slot in {slot for _, slot in finished}
    )
    assert len(finished) == 2 * len(names)
    assert {r["outcome"] for r in records if r["event"] == "attempt_finished"} == {"succeeded"}
    assert queued == (0,)


# -- 3. history --output jsonl ---------------------------------------------------------------


def _run_the_story(cli, state: str) -> None:
    """ok succeeds twice; bad fails, fails its retry (dead letter), then fails again."""
    assert cli("--jobs-dir", J, "--state-dir", state, "apply", "--now", T0).code == 0
    for now in (T1, T2, T3):
        result = cli("--state-dir", state, "tick", "--now", now)
        assert result.code == 1, result.err


def _jsonl(cli, state: str, *args: str) -> str:
    result = cli("--state-dir", state, "history", "-o", "jsonl", *args)
    assert result.code == 0, result.err
    return result.out


def _shape(line: dict[str, Any]) -> tuple[str, str, int, tuple[str, ...]]:
    return (line["event"], line["job"], line["attempt"], tuple(line))


def test_history_jsonl_is_the_same_format_on_both_backends(
    cli, jobs_dir: Path, state_dir: Path, pg_url: str, local_dir: Path
) -> None:
    _jobs(jobs_dir)
    _run_the_story(cli, str(state_dir))
    _run_the_story(cli, pg_url)

    days = sorted((state_dir / "records").glob("*.jsonl"))
    assert [p.name for p in days] == ["2026-11-23.jsonl", "2026-11-24.jsonl"]
    # bytes, from a real process: exactly what `history -o jsonl > file` would write
    argv = [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), "history"]
    raw = subprocess.run(
        [*argv, "-o", "jsonl"],
        capture_output=True,
        check=True,
    ).stdout
    assert raw == b"".join(p.read_bytes() for p in days)
    on_files = _jsonl(cli, str(state_dir))
    assert on_files.encode() == raw
    on_pg = _jsonl(cli, pg_url)
    file_lines = [json.loads(line) for line in on_files.splitlines()]
    pg_lines = [json.loads(line) for line in on_pg.splitlines()]
    # written the way the file backend writes a record (compact, UTF-8, key order kept)
    assert [encode(line) for line in pg_lines] == on_pg.encode().splitlines(keepends=True)
    assert "✓" in on_pg and "✓" in on_files
    assert Counter(line["event"] for line in pg_lines) == Counter(
        line["event"] for line in file_lines
    )
    assert {"attempt_started", "attempt_finished", "dead_lettered"} <= {
        line["event"] for line in pg_lines
    }
    # the same keys in the same order for the same event (values such as run ids differ)
    assert sorted(map(_shape, pg_lines)) == sorted(map(_shape, file_lines))

    from jsonschema import Draft202012Validator

    schema = json.loads((REPO / "schema" / "run-record.schema.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for line in pg_lines:
        problems = [error.message for error in validator.iter_errors(line)]
        assert problems == [], line

    # filters: --since (records at or after that time) and a job name
    since = "2026-11-23T23:02:00+00:00"
    later = [json.loads(line) for line in _jsonl(cli, pg_url, "--since", since).splitlines()]
    assert later == [line for line in pg_lines if line["time"] >= since]
    assert 0 < len(later) < len(pg_lines)
    only_ok = [json.loads(line) for line in _jsonl(cli, pg_url, "ok").splitlines()]
    assert only_ok == [line for line in pg_lines if line["job"] == "ok"]
    assert 0 < len(only_ok) < len(pg_lines)
    both = _jsonl(cli, pg_url, "bad", "--since", "2026-11-24T00:00:00+00:00")
    assert [json.loads(line) for line in both.splitlines()] == [
        line for line in pg_lines if line["job"] == "bad" and line["time"] >= "2026-11-24"
    ]


# -- 4. state export / import between backends -----------------------------------------------


def _export(cli, state: str, target: Path) -> list[dict[str, Any]]:
    result = cli("--state-dir", state, "state", "export", "--file", str(target))
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    head = lines[0]
    assert head["kind"] == "format" and head["source"] == state
    # when and from where it was exported: the rest is the deployment
    return [{k: v for k, v in head.items() if k not in ("exported_at", "source")}, *lines[1:]]


def _views(cli, state: str) -> list[Any]:
    views = []
    verbs = [("status", "--now", T3), ("history",), ("history", "--since", T2), ("dlq", "list")]
    for verb in verbs:
        result = cli("--state-dir", state, "-o", "json", *verb)
        assert result.code == 0, result.err
        views.append(json.loads(result.out))
    return views


def test_state_moves_from_files_to_postgres_and_back_without_losing_anything(
    cli, jobs_dir: Path, state_dir: Path, pg_url: str, local_dir: Path, tmp_path: Path
) -> None:
    _jobs(jobs_dir)
    write(jobs_dir / "idle.yaml", "schedule: {every: 1h}\ncommand: [sh, -c, 'exit 0']\n")
    files = str(state_dir)
    _run_the_story(cli, files)  # bad: a dead letter, then a retry waiting in the queue
    assert cli("--state-dir", files, "pause", "idle").code == 0
    assert cli("--state-dir", files, "run", "ok").code == 0  # a manual run, no slot

    first = _export(cli, files, tmp_path / "from-files.jsonl")
    kinds = Counter(line["kind"] for line in first)
    assert kinds["applied"] == 3 and kinds["job_state"] == 3
    assert kinds["dead_letter"] == 1 and kinds["queue_item"] == 1
    assert kinds["record"] == len(_jsonl(cli, files).splitlines()) > 10
    assert [line["value"]["paused"] for line in first if line["kind"] == "job_state"] == [
        False,
        True,
        False,
    ]

    exported = str(tmp_path / "from-files.jsonl")
    imported = cli("--state-dir", pg_url, "-o", "json", "state", "import", exported)
    assert imported.code == 0, imported.err
    assert json.loads(imported.out) == dict(kinds)
    second = _export(cli, pg_url, tmp_path / "from-pg.jsonl")
    assert second == first

    back = str(tmp_path / "back")
    assert cli("--state-dir", back, "state", "import", str(tmp_path / "from-pg.jsonl")).code == 0
    third = _export(cli, back, tmp_path / "back.jsonl")
    assert third == first

    views = _views(cli, files)
    assert views[1] and views[2] and views[3]  # some history and a dead letter to compare
    assert len(views[2]) < len(views[1])
    assert _views(cli, pg_url) == views
    assert _views(cli, back) == views

    # the moved deployment has nothing to apply, and keeps scheduling from where it was
    assert cli("--jobs-dir", J, "--state-dir", pg_url, "plan").code == 0
    ticked = cli("--state-dir", pg_url, "-o", "json", "tick", "--now", "2026-11-24T00:32:00Z")
    assert ticked.code == 1
    attempts = json.loads(ticked.out)["attempts"]
    assert [(a["job"], a["attempt"], a["next"]) for a in attempts] == [("bad", 2, "dead_letter")]
    assert len(json.loads(cli("--state-dir", pg_url, "-o", "json", "dlq", "list").out)) == 2

    # a target with applied jobs is refused, and left as it was
    for target in (pg_url, back):
        before = _export(cli, target, tmp_path / "before.jsonl")
        again = cli("--state-dir", target, "state", "import", exported)
        assert again.code == 2
        assert again.err == (
            f"agentjobs: error: {target} already has applied jobs; "
            "import into an empty state directory\n"
        )
        assert _export(cli, target, tmp_path / "after.jsonl") == before


# -- 5. connection errors ----------------------------------------------------------------------

BAD_URL = "postgresql://nobody@127.0.0.1:1/x"


def test_an_unreachable_database_is_one_line_and_leaves_no_files(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    local = tmp_path / "local"
    env = {**os.environ, "AGENTJOBS_LOCAL_DIR": str(local)}
    verbs = [
        ("db", "migrate"),
        ("status",),
        ("tick", "--now", T1),
        ("history", "-o", "jsonl"),
        ("state", "export"),
        ("state", "export", "--file", "out.jsonl"),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "agentjobs", "--state-dir", BAD_URL, *verb],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for verb in verbs
    ]
    for verb, (code, out, err) in zip(verbs, _finish(procs), strict=True):
        assert (code, out) == (2, ""), (verb, err)
        line = _one_error_line(err)
        assert line.startswith(f"agentjobs: error: cannot connect to the database {BAD_URL}: "), (
            verb,
            line,
        )
    assert sorted(p.name for p in work.iterdir()) == []
    assert not local.exists()


def test_a_database_outage_is_state_unavailable_one_line_and_exit_2(
    cli, pg_url: str, pg_server: Any, local_dir: Path
) -> None:
    store = PostgresStore(pg_url, local_dir)
    assert store.renew("no-such-token", 1.0) is False  # connected
    with psycopg.connect(pg_url, autocommit=True) as admin:  # a failover cuts the connection
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(DatabaseLost, match=r"^lost the database ") as lost:
        store.renew("no-such-token", 1.0)
    assert isinstance(lost.value, StateUnavailableError)  # the outage class, retried by leases
    pg_server.stop()
    try:
        with pytest.raises(StateUnavailableError, match=r"^cannot connect to the database "):
            store.renew("no-such-token", 1.0)
        down = cli("--state-dir", pg_url, "status")
    finally:
        pg_server.start()
        store.close()
    assert (down.code, down.out) == (2, "")
    assert _one_error_line(down.err).startswith("agentjobs: error: cannot connect to the database ")


def test_a_lease_renews_through_an_outage_but_never_through_a_real_error() -> None:
    class Failing:  # renewals fail: the database is away, or something that waiting won't fix
        def __init__(self, error: Exception) -> None:
            self.error = error
            self.calls = 0

        def renew(self, token: str, duration: float) -> bool:
            self.calls += 1
            raise self.error

    away = Failing(DatabaseLost("lost the database"))
    lease = Lease(cast(PostgresStore, away), "t", 0.3)
    lease._renew()  # every 0.1 s until renewals have failed for 0.2 s
    assert lease.lost.is_set() and away.calls >= 2
    assert lease.reason.startswith("the lease could not be renewed for 0.2s (lost the database)")
    wrong = Failing(UserError("not an outage"))
    lease = Lease(cast(PostgresStore, wrong), "t", 0.3)
    lease._renew()
    assert lease.lost.is_set() and wrong.calls == 1
    assert lease.reason == "the lease could not be renewed (not an outage)"


def test_a_password_in_the_url_never_appears_in_messages(
    cli, pg_url: str, local_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hunter2secret"
    assert PostgresStore("postgresql://u:pw@db.example:5432/jobs").describe() == (
        "postgresql://u:***@db.example:5432/jobs"
    )
    assert PostgresStore("postgresql://u@db.example/jobs").describe() == (
        "postgresql://u@db.example/jobs"
    )
    assert PostgresStore(
        f"postgresql://u@db/jobs?sslmode=require&password={secret}"
    ).describe() == ("postgresql://u@db/jobs?sslmode=require&password=***")
    # unreachable: the connection error names the URL without its password
    bad = BAD_URL.replace("nobody@", f"nobody:{secret}@")
    refused = run_agentjobs("--state-dir", bad, "db", "migrate")
    assert refused.returncode == 2
    line = _one_error_line(refused.stderr)
    assert "postgresql://nobody:***@127.0.0.1:1/x" in line and secret not in line
    # reachable (the test server trusts 127.0.0.1, so any password works)
    url = pg_url.replace("postgres@", f"postgres:{secret}@")
    shown = pg_url.replace("postgres@", "postgres:***@")
    migrated = cli("--state-dir", url, "db", "migrate")
    assert migrated.out.startswith("applied migration(s) 1") and f" to {shown}; " in migrated.out
    status = cli("--state-dir", url, "status")
    assert status.out == f"no jobs applied in {shown}; run `agentjobs apply`\n"
    export = cli("--state-dir", url, "state", "export")
    assert json.loads(export.out.splitlines()[0])["source"] == shown
    monkeypatch.setenv("AGENTJOBS_DATABASE_URL", url)  # chosen without --state-dir too
    from_env = cli("status")
    assert from_env.out == status.out
    for result in (migrated, status, export, from_env):
        assert result.code == 0 and secret not in result.out + result.err


# -- 6. the file backend stays free of psycopg ------------------------------------------------


def test_the_file_backend_never_imports_psycopg(
    cli, jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    _jobs(jobs_dir)
    assert cli("--jobs-dir", J, "--state-dir", str(state_dir), "apply", "--now", T0).code == 0
    script = f"""
import sys
from agentjobs.cli import main
state = {str(state_dir)!r}
for args in (
    ["status"],
    ["tick", "--now", {T1!r}],
    ["history", "-o", "jsonl"],
    ["dlq", "list"],
    ["state", "export", "--file", {str(tmp_path / "out.jsonl")!r}],
):
    code = main(["--state-dir", state, *args])
    assert code in (0, 1), (args, code)
    assert "psycopg" not in sys.modules, args
print("no psycopg")
"""
    env = {k: v for k, v in os.environ.items() if k != "AGENTJOBS_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("no psycopg\n")
