"""The shared backend: one PostgreSQL database for every runner host.

Chosen with `--state-dir postgresql://...` or `AGENTJOBS_DATABASE_URL`. The same `Store` contract
as the file backend (tests/test_store_contract.py runs against both), with the file backend's
flocks replaced by what works across hosts:

- The state lock is a row lock on `meta` (`SELECT ... FOR UPDATE`): transaction-scoped, so it works
  behind PgBouncer in transaction mode and a lost connection releases it with the transaction.
  Whole-state transactions (enqueue, finish, apply, pause...) take it exclusively; claims take it
  shared and compete among themselves with `FOR UPDATE SKIP LOCKED` on queue rows.
- Exactly-once slots: a unique index on queue (job, slot); new items go in with
  `INSERT ... ON CONFLICT DO NOTHING` in the same transaction that advances the job's marker.
- Lock keys and concurrency slots are lease rows (`leases`): holder host, pid, run, attempt and
  `expires_at` in database time, at most one live row per key (a partial unique index). The
  holder renews every lease/3 (`Lease`); an expired lease may be taken by anyone, and a running
  attempt without a live lease is an orphan (`lost`) for whichever host ticks next.
- Records and dead letters are tables; attempt logs and worktrees stay on the host that ran the
  attempt (`local_dir`).

Migrations are numbered SQL scripts applied in order, each in its own transaction, serialized by
a transaction-level advisory lock (never a session-level one).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agentjobs import records as records_mod
from agentjobs.errors import StateUnavailableError, UserError
from agentjobs.limits import Allowance
from agentjobs.store import (
    PRIORITY_RANK,
    AppliedChange,
    AppliedJob,
    Claim,
    ClaimRequest,
    JobState,
    OutboxEvent,
    QueueItem,
    Refusal,
    Runtime,
    held_message,
)
from agentjobs.store.eligibility import claimed, needs_ledger, refusal

if TYPE_CHECKING:
    import psycopg

SCHEMA = "agentjobs"
MIGRATION_LOCK = 0x61676A6F62  # "agjob": pg_advisory_xact_lock key for migrations
CLAIM_BATCH = 16  # rows a claim locks at a time (`SKIP LOCKED`: the others pass them by)
CLAIM_ROUNDS = 20  # claims again while other hosts' claims hold every due row


class _Contended:
    """`_claim_once`: nothing claimed, but other hosts' claims held rows this host could take."""


CONTENDED = _Contended()
CACHE_AGE = 300.0  # seconds a process trusts its copy of the state (tombstones live 600 s)
IDLE_CHECK = 1.0  # seconds idle after which a connection is checked before use
CONNECT_RETRY = 5.0  # seconds spent retrying a refused connection

MIGRATIONS: list[str] = [
    # 1: the whole schema
    f"""
    CREATE TABLE {SCHEMA}.meta (
        id int PRIMARY KEY CHECK (id = 1),
        created_at timestamptz NOT NULL DEFAULT now(),
        applied_version bigint NOT NULL DEFAULT 0,
        runtime_applied_version text NOT NULL DEFAULT '',
        config jsonb NOT NULL DEFAULT '{{}}',
        written boolean NOT NULL DEFAULT false
    );
    INSERT INTO {SCHEMA}.meta (id) VALUES (1);
    CREATE TABLE {SCHEMA}.applied (name text PRIMARY KEY, data jsonb NOT NULL);
    -- every write of a job state or queue row takes a new version; deletions leave a row in
    -- `removed`: a whole-state transaction reads only what changed since its process's last
    CREATE SEQUENCE {SCHEMA}.row_version;
    CREATE TABLE {SCHEMA}.jobs (
        name text PRIMARY KEY,
        data jsonb NOT NULL,
        version bigint NOT NULL DEFAULT nextval('{SCHEMA}.row_version')
    );
    CREATE INDEX jobs_version ON {SCHEMA}.jobs (version);
    CREATE TABLE {SCHEMA}.removed (
        kind text NOT NULL,
        key text NOT NULL,
        version bigint NOT NULL DEFAULT nextval('{SCHEMA}.row_version'),
        at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX removed_version ON {SCHEMA}.removed (version);
    CREATE TABLE {SCHEMA}.queue (
        id text PRIMARY KEY,
        job text NOT NULL,
        slot text,
        state text NOT NULL,
        rank int NOT NULL,
        queued_at text NOT NULL,
        not_before text NOT NULL,
        lock_key text NOT NULL,
        data jsonb NOT NULL,
        version bigint NOT NULL DEFAULT nextval('{SCHEMA}.row_version')
    );
    CREATE INDEX queue_version ON {SCHEMA}.queue (version);
    CREATE UNIQUE INDEX queue_job_slot ON {SCHEMA}.queue (job, slot) WHERE slot IS NOT NULL;
    CREATE INDEX queue_claim ON {SCHEMA}.queue (rank, queued_at, id) WHERE state = 'queued';
    CREATE INDEX queue_running ON {SCHEMA}.queue (lock_key) WHERE state = 'running';
    CREATE TABLE {SCHEMA}.holds (key text PRIMARY KEY, until text NOT NULL);
    CREATE TABLE {SCHEMA}.records (
        seq bigserial PRIMARY KEY,
        day text NOT NULL,
        data json NOT NULL  -- json, not jsonb: the record's key order is kept (git diffs)
    );
    CREATE INDEX records_day ON {SCHEMA}.records (day, seq);
    CREATE TABLE {SCHEMA}.records_archive (
        seq bigint PRIMARY KEY,
        day text NOT NULL,
        data json NOT NULL
    );
    CREATE TABLE {SCHEMA}.dead_letters (
        id text PRIMARY KEY,
        seq bigserial,
        data json NOT NULL
    );
    CREATE TABLE {SCHEMA}.counters (name text PRIMARY KEY, value bigint NOT NULL);
    CREATE TABLE {SCHEMA}.side (name text PRIMARY KEY, value jsonb);
    CREATE TABLE {SCHEMA}.leases (
        id bigserial PRIMARY KEY,
        key text NOT NULL,
        token text NOT NULL,
        host text NOT NULL,
        pid int NOT NULL,
        run_id text,
        attempt int,
        note text NOT NULL DEFAULT '',
        acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        expires_at timestamptz NOT NULL,
        released_at timestamptz,
        release_reason text
    );
    CREATE UNIQUE INDEX leases_live_key ON {SCHEMA}.leases (key) WHERE released_at IS NULL;
    CREATE INDEX leases_token ON {SCHEMA}.leases (token) WHERE released_at IS NULL;
    CREATE INDEX leases_run ON {SCHEMA}.leases (run_id, attempt) WHERE released_at IS NULL;
    CREATE INDEX leases_expiry ON {SCHEMA}.leases (expires_at) WHERE released_at IS NULL;
    CREATE TABLE {SCHEMA}.host_notes (
        host text NOT NULL,
        item_id text NOT NULL,
        reason text NOT NULL,
        at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (host, item_id)
    );
    CREATE TABLE {SCHEMA}.hosts (
        host text PRIMARY KEY,
        labels jsonb NOT NULL DEFAULT '[]',
        pid int,
        seen_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 2: the notification outbox (notify.py): pending and undelivered events
    f"""
    CREATE TABLE {SCHEMA}.outbox (
        id text PRIMARY KEY,
        undelivered boolean NOT NULL DEFAULT false,
        data jsonb NOT NULL
    );
    CREATE INDEX outbox_pending ON {SCHEMA}.outbox (id) WHERE NOT undelivered;
    """,
    # 3: the ledger (limits.py): spend per day, attempt starts for rates, recent costs; one
    # row, locked by a claim that judges a budget or a rate (caps hold across hosts)
    f"""
    CREATE TABLE {SCHEMA}.ledger (id int PRIMARY KEY CHECK (id = 1), data jsonb NOT NULL);
    INSERT INTO {SCHEMA}.ledger (id, data) VALUES (1, '{{}}');
    """,
    # 4: running attempts' progress (progress.py), one row per run, written about once a
    # second: unlogged (no WAL; emptied by a crash, when no attempt runs on anyway)
    f"""
    CREATE UNLOGGED TABLE {SCHEMA}.progress (
        run_id text PRIMARY KEY,
        attempt int NOT NULL,
        data jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 5: the review inbox (review.py): a run awaiting a person's decision, and the decision
    f"""
    CREATE TABLE {SCHEMA}.reviews (id text PRIMARY KEY, data jsonb NOT NULL);
    """,
]


def _put_ledger(cur: psycopg.Cursor[Any], ledger: Mapping[str, Any]) -> None:
    cur.execute(f"UPDATE {SCHEMA}.ledger SET data = %s WHERE id = 1", (json.dumps(ledger),))


def default_local_dir() -> Path:
    """This host's files with a shared database (attempt logs, worktrees, the daemon lock):
    `AGENTJOBS_LOCAL_DIR`, else `$XDG_STATE_HOME/agentjobs`, else ~/.local/state/agentjobs."""
    explicit = os.environ.get("AGENTJOBS_LOCAL_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "agentjobs"


def redact(url: str) -> str:
    """The URL without a password (in the user part or a `password=` parameter), for messages."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        hidden = [(key, "***" if key == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="/*"))
    return urlunsplit(parts)


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise UserError(
            "the PostgreSQL backend needs psycopg 3: pip install 'agentjobs[postgres]'"
        ) from None
    return psycopg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class DatabaseLost(StateUnavailableError):
    """The connection broke (a server restart, a network cut); nothing of the step committed."""


R = TypeVar("R")


def _again_once(method: Callable[..., R]) -> Callable[..., R]:
    """Run an idempotent store method once more (on a new connection) when its connection
    broke: after a server restart every old connection fails once."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return method(*args, **kwargs)
        except DatabaseLost:
            return method(*args, **kwargs)

    return wrapper


class Lease:
    """The lease rows of one attempt (its lock key and its concurrency slots), one token.

    `start(pgid)` begins renewing every lease/3 and starts the fence: a small separate process
    that kills the attempt's process group unless renewals keep arriving (so a runner that is
    frozen or killed cannot leave its agent running past the lease). `lost` is set when a renewal
    finds the lease gone or renewals failed for lease*2/3: the runner then stops the attempt.
    `fd` is None: nothing to pass to the child.
    """

    fds: tuple[int, ...] = ()  # nothing to pass to the child

    def __init__(self, store: PostgresStore, token: str, duration: float) -> None:
        self.store = store
        self.token = token
        self.duration = duration
        self.lost = threading.Event()
        self.reason = ""
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._fence: Any = None
        self._released = False
        self._last_ok = time.monotonic()  # when the last renewal that succeeded was sent

    @property
    def settle_window(self) -> float:
        """Settling is retried while the database is away for a lease (at least 10 s): after
        that another host may have recorded the attempt `lost`."""
        return max(self.duration, 10.0)

    def handoff(self) -> dict[str, Any]:
        return {"token": self.token, "duration": self.duration}

    def let_go(self) -> None:
        pass  # the supervisor renews and releases the lease rows

    def done(self) -> None:
        pass  # the lease rows are the supervisor's to release

    def started(self, pid: int) -> None:
        self.start(pid)

    def start(self, pgid: int) -> None:
        from agentjobs.runner import start_fence

        self._last_ok = time.monotonic()
        self._fence = start_fence(pgid, self.duration * 2 / 3)
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        try:
            self._renew()
        finally:
            self.store.close_thread()

    def _renew(self) -> None:
        interval = self.duration / 3
        while not self._done.wait(interval):
            attempt_at = time.monotonic()
            try:
                alive = self.store.renew(self.token, self.duration)
            except StateUnavailableError as exc:  # the database is away: again, until overdue
                if self.overdue():
                    self._lose(
                        f"the lease could not be renewed for {self.duration * 2 / 3:g}s ({exc})"
                    )
                    return
                continue
            except UserError as exc:  # not an outage: waiting would not help
                self._lose(f"the lease could not be renewed ({exc})")
                return
            if not alive:
                self._lose("the lease was taken over by another host (it expired)")
                return
            self._last_ok = attempt_at
            if self._fence is not None:
                self._fence.extend()

    def overdue(self) -> bool:
        """Whether renewals have failed for lease*2/3: the fence kills the attempt then."""
        return time.monotonic() - self._last_ok >= self.duration * 2 / 3

    def fenced_reason(self) -> str | None:
        """Why the attempt was stopped for its lease (lost, or renewals overdue), or None."""
        if self.lost.is_set():
            return self.reason
        fired = self._fence is not None and self._fence.fired()
        if self.overdue() or fired:
            # (fired: a renewal sent in time but answered after the fence's window, while the
            # database went away, leaves `overdue` false; the fence killed the group anyway)
            return f"the lease could not be renewed for {self.duration * 2 / 3:g}s"
        return None

    def _lose(self, reason: str) -> None:
        self.reason = reason
        self.lost.set()
        if self._fence is not None:
            self._fence.fire()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._fence is not None:
            self._fence.close()
        if not self.lost.is_set():
            with contextlib.suppress(UserError):  # unreachable: the lease expires by itself
                self.store.release_token(self.token)


class PostgresStore:
    """State in a PostgreSQL database (schema `agentjobs`)."""

    shared = True
    one_clock = False  # another host's clock may run ahead of this one's
    records_with_state = True  # records go in with the state, in one transaction

    def __init__(self, url: str, local_dir: Path | None = None) -> None:
        self.url = url
        self.local_dir: Path = local_dir or default_local_dir()
        self.locks_dir = self.local_dir / "locks"
        self._local = threading.local()
        # every open connection (one per thread that used the store), closed by `close()`, by
        # `close_thread()` when a thread is done, or when the store is collected
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        weakref.finalize(self, _close_all, self._conns, self._conns_lock)
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._applied_cache: tuple[int, dict[str, AppliedJob], dict[str, Any]] | None = None
        # (row version, jobs, queue, monotonic time): the state as this process last saw it
        # under the exclusive lock; a transaction reads only rows with a newer version
        self._state_cache: tuple[int, dict[str, JobState], dict[str, QueueItem], float] | None = (
            None
        )
        self._writes = 0

    def describe(self) -> str:
        return redact(self.url)

    def reopened(self) -> PostgresStore:
        return PostgresStore(self.url, self.local_dir)

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """This thread's connection. One that sat idle for a while is checked first (a server
        restart breaks it silently); connecting is retried for a few seconds (a restarting
        server refuses connections briefly)."""
        pg = _import_psycopg()
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.broken:
            idle = time.monotonic() - getattr(self._local, "used_at", 0.0)
            if idle < IDLE_CHECK or conn.info.transaction_status != 0:  # 0: idle, no txn
                self._local.used_at = time.monotonic()
                return conn
            try:
                conn.execute("SELECT 1")
                self._local.used_at = time.monotonic()
                return conn
            except pg.Error:
                self.close_thread()
        deadline = time.monotonic() + CONNECT_RETRY
        delay = 0.1
        while True:
            try:
                conn = pg.connect(
                    self.url, autocommit=True, connect_timeout=10, application_name="agentjobs"
                )
                break
            except pg.Error as exc:
                if time.monotonic() + delay > deadline:
                    raise StateUnavailableError(
                        f"cannot connect to the database {self.describe()}: {_first_line(exc)}; "
                        "check the URL and that the server is up"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._local.conn = conn
        self._local.used_at = time.monotonic()
        assert conn is not None
        with self._conns_lock:
            self._conns.append(conn)
        if not self._migrated:
            with self._migrate_lock:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
        return conn

    @contextmanager
    def _db(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for this thread; a lost connection becomes `DatabaseLost` (one line)."""
        pg = _import_psycopg()
        conn = self._connect()
        try:
            yield conn
        except pg.OperationalError as exc:
            if conn.broken or conn.closed:
                self.close_thread()
            raise DatabaseLost(
                f"lost the database {self.describe()}: {_first_line(exc)}; nothing was "
                "written by the failed step, the next tick picks up from the stored state"
            ) from None

    def close(self) -> None:
        """Close every connection of this store (all threads)."""
        _close_all(self._conns, self._conns_lock)
        self._local = threading.local()

    def close_thread(self) -> None:
        """Close this thread's connection (a worker or renewal thread that is done)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    # -- migrations ------------------------------------------------------------------------

    @staticmethod
    def _version(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.migrations",)
        ).fetchone()
        if not row or not row[0]:
            return 0
        found = conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.migrations")
        value = found.fetchone()
        return int(value[0]) if value else 0

    def _migrate(self, conn: psycopg.Connection[Any]) -> list[int]:
        """Apply missing migrations; several hosts starting together queue on the lock."""
        current = self._version(conn)
        if current > len(MIGRATIONS):
            raise UserError(
                f"database {self.describe()} has agentjobs schema version {current}, newer than "
                f"this agentjobs understands ({len(MIGRATIONS)}); upgrade agentjobs"
            )
        if current == len(MIGRATIONS):
            return []
        done = []
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.migrations ("
                "version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = self._version(conn)  # another host may have migrated meanwhile
            for number in range(current + 1, len(MIGRATIONS) + 1):
                conn.execute(MIGRATIONS[number - 1])
                conn.execute(f"INSERT INTO {SCHEMA}.migrations (version) VALUES (%s)", (number,))
                done.append(number)
        return done

    def migrate(self) -> list[int]:
        """`agentjobs db migrate`: the migrations applied now (empty when up to date)."""
        psycopg = _import_psycopg()
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StateUnavailableError(
                f"cannot connect to the database {self.describe()}: {_first_line(exc)}"
            ) from None
        with conn:
            done = self._migrate(conn)
        self._migrated = True
        return done

    # -- the protocol: reads ---------------------------------------------------------------

    @_again_once
    def exists(self) -> bool:
        with self._db() as conn:
            row = conn.execute(f"SELECT written FROM {SCHEMA}.meta WHERE id = 1").fetchone()
        return bool(row and row[0])

    @contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        with self._db() as conn, conn.transaction():
            self._lock_meta(conn, timeout, "FOR UPDATE")
            yield

    def _lock_meta(self, conn: psycopg.Connection[Any], timeout: float, mode: str) -> None:
        """Lock the meta row (`FOR UPDATE`: whole-state; `FOR SHARE`: a claim), waiting at most
        `timeout` seconds. One round trip (no parameters: both statements in one message)."""
        psycopg = _import_psycopg()
        millis = max(1, int(timeout * 1000))
        try:
            conn.execute(
                f"SET LOCAL lock_timeout = '{millis}ms'; "
                f"SELECT 1 FROM {SCHEMA}.meta WHERE id = 1 {mode}"
            )
        except psycopg.errors.LockNotAvailable:
            raise StateUnavailableError(
                f"the state in {self.describe()} is locked by another agentjobs process for "
                f"more than {timeout:g}s; try again when it is done"
            ) from None

    @_again_once
    def _applied_all(self) -> tuple[dict[str, AppliedJob], dict[str, Any]]:
        with self._db() as conn:
            row = conn.execute(f"SELECT applied_version, config FROM {SCHEMA}.meta").fetchone()
            version, config = (int(row[0]), row[1]) if row else (0, {})
            cached = self._applied_cache
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            rows = conn.execute(f"SELECT name, data FROM {SCHEMA}.applied").fetchall()
        jobs = {name: AppliedJob.from_dict(name, data) for name, data in rows}
        self._applied_cache = (version, jobs, config)
        return jobs, config

    def applied(self) -> dict[str, AppliedJob]:
        return dict(self._applied_all()[0])

    def config(self) -> dict[str, Any]:
        return dict(self._applied_all()[1])

    @_again_once
    def applied_version(self) -> str:
        with self._db() as conn:
            row = conn.execute(f"SELECT applied_version FROM {SCHEMA}.meta").fetchone()
        return "" if not row or not row[0] else str(row[0])

    def _read_runtime(
        self, conn: psycopg.Connection[Any], since: int = -1
    ) -> tuple[Runtime, int, set[tuple[str, str]]]:
        """The state in one query: everything (`since` -1), or the job states and queue rows
        written after row version `since` (the rest is the caller's copy). Returns the runtime
        (only changed rows when `since` >= 0), the current row version, and the (kind, key)
        pairs deleted since."""
        rows = conn.execute(
            f"SELECT 'm', runtime_applied_version, NULL::jsonb FROM {SCHEMA}.meta "
            f"UNION ALL SELECT 'v', nextval('{SCHEMA}.row_version')::text, NULL "
            f"UNION ALL SELECT 'h', key, to_jsonb(until) FROM {SCHEMA}.holds "
            f"UNION ALL SELECT 'g', '', data FROM {SCHEMA}.ledger "
            f"UNION ALL SELECT 'j', name, data FROM {SCHEMA}.jobs WHERE version > %(v)s "
            f"UNION ALL SELECT 'q', id, data FROM {SCHEMA}.queue WHERE version > %(v)s "
            f"UNION ALL SELECT 'r' || kind, key, NULL FROM {SCHEMA}.removed "
            "WHERE version > %(v)s AND %(v)s >= 0",
            {"v": since},
        ).fetchall()
        runtime = Runtime()
        version = 0
        removed: set[tuple[str, str]] = set()
        for kind, key, data in rows:
            if kind == "j":
                runtime.jobs[key] = JobState.from_dict(data)
            elif kind == "q":
                runtime.queue[key] = QueueItem.from_dict(data)
            elif kind == "h":
                runtime.holds[key] = data
            elif kind == "g":
                runtime.ledger = dict(data)
            elif kind == "m":
                runtime.applied_version = key
            elif kind == "v":
                version = int(key)
            else:
                removed.add((kind[1:], key))
        return runtime, version, removed

    def _current_runtime(self, conn: psycopg.Connection[Any]) -> tuple[Runtime, int]:
        """The whole state, from this process's copy plus what changed since (exclusive lock
        held: no one else writes meanwhile, so every row version below the current one is
        already committed)."""
        cache = self._state_cache
        if cache is None or time.monotonic() - cache[3] > CACHE_AGE:
            runtime, version, _ = self._read_runtime(conn)
            return runtime, version
        changed, version, removed = self._read_runtime(conn, cache[0])
        jobs, queue = dict(cache[1]), dict(cache[2])
        for kind, key in removed:  # deletions first: a row written again since is in `changed`
            (jobs if kind == "j" else queue).pop(key, None)
        jobs.update(changed.jobs)
        queue.update(changed.queue)
        return Runtime(jobs, queue, changed.applied_version, changed.holds, changed.ledger), version

    @_again_once
    def runtime(self) -> Runtime:
        with self._db() as conn:  # one statement: one snapshot
            return self._read_runtime(conn)[0]

    @_again_once
    def queue_item(self, item_id: str) -> QueueItem | None:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT data FROM {SCHEMA}.queue WHERE id = %s", (item_id,)
            ).fetchone()
        return None if row is None else QueueItem.from_dict(row[0])

    # -- the protocol: writes --------------------------------------------------------------

    @contextmanager
    def transaction(self, timeout: float) -> Iterator[Runtime]:
        kept = None
        with self._db() as conn, conn.transaction():
            self._lock_meta(conn, timeout, "FOR UPDATE")
            runtime, version = self._current_runtime(conn)
            before = Runtime(
                dict(runtime.jobs),
                dict(runtime.queue),
                runtime.applied_version,
                dict(runtime.holds),
                json.loads(json.dumps(runtime.ledger)),
            )
            self._state_cache = None  # until the transaction commits
            yield runtime
            self._write_runtime(conn, before, runtime)
            kept = (version, dict(runtime.jobs), dict(runtime.queue), time.monotonic())
        self._state_cache = kept  # committed: the state as of `version` plus our own writes

    def _write_runtime(
        self, conn: psycopg.Connection[Any], before: Runtime, after: Runtime
    ) -> None:
        with conn.cursor() as cur:
            gone_jobs = [name for name in before.jobs if name not in after.jobs]
            _delete_rows(cur, "jobs", "name", "j", gone_jobs)
            put = [
                (name, json.dumps(state.to_dict()))
                for name, state in after.jobs.items()
                if (old := before.jobs.get(name)) is not state and old != state
            ]
            if put:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.jobs (name, data) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET data = excluded.data, "
                    f"version = nextval('{SCHEMA}.row_version')",
                    put,
                )
            gone = [key for key in before.queue if key not in after.queue]
            _delete_rows(cur, "queue", "id", "q", gone)
            new = [_queue_row(item) for key, item in after.queue.items() if key not in before.queue]
            if new:
                # a slot already in the queue (unique job+slot) is not enqueued twice
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.queue "
                    "(id, job, slot, state, rank, queued_at, not_before, lock_key, data) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    new,
                )
            updated = [
                _queue_row(item)
                for key, item in after.queue.items()
                if key in before.queue and (was := before.queue[key]) is not item and was != item
            ]
            if updated:
                cur.executemany(
                    f"UPDATE {SCHEMA}.queue SET job = %s, slot = %s, state = %s, rank = %s, "
                    "queued_at = %s, not_before = %s, lock_key = %s, data = %s, "
                    f"version = nextval('{SCHEMA}.row_version') WHERE id = %s",
                    [(*row[1:], row[0]) for row in updated],
                )
            changed = bool(gone_jobs or put or gone or new or updated)
            if after.holds != before.holds:
                cur.execute(f"DELETE FROM {SCHEMA}.holds")
                if after.holds:
                    cur.executemany(
                        f"INSERT INTO {SCHEMA}.holds (key, until) VALUES (%s, %s)",
                        list(after.holds.items()),
                    )
                changed = True
            if after.ledger != before.ledger:
                _put_ledger(cur, after.ledger)
            if after.applied_version != before.applied_version or changed:
                cur.execute(
                    f"UPDATE {SCHEMA}.meta SET runtime_applied_version = %s, written = true",
                    (after.applied_version,),
                )
            self._writes += 1
            if self._writes % 200 == 1:  # tombstones outlive every process's copy (CACHE_AGE)
                cur.execute(
                    f"DELETE FROM {SCHEMA}.removed WHERE at < now() - interval '600 seconds'"
                )

    def write_applied(self, change: AppliedChange) -> None:
        with self._db() as conn, conn.transaction(), conn.cursor() as cur:
            if change.remove:
                cur.execute(
                    f"DELETE FROM {SCHEMA}.applied WHERE name = ANY(%s)", (list(change.remove),)
                )
            if change.put:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.applied (name, data) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                    [(name, json.dumps(job.to_dict())) for name, job in change.put.items()],
                )
            if change.config is not None:
                cur.execute(
                    f"UPDATE {SCHEMA}.meta SET config = %s", (json.dumps(dict(change.config)),)
                )
            cur.execute(
                f"UPDATE {SCHEMA}.meta SET applied_version = applied_version + 1, written = true"
            )

    # -- records, logs, dead letters -------------------------------------------------------

    def append_records(self, records: Iterable[Mapping[str, Any]], moment: datetime) -> None:
        rows = [(f"{moment.astimezone(UTC):%Y-%m-%d}", json.dumps(dict(r))) for r in records]
        if not rows:
            return
        with self._db() as conn, conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {SCHEMA}.records (day, data) VALUES (%s, %s)", rows)

    def records(
        self, since: datetime | None = None, newest_first: bool = False
    ) -> Iterator[dict[str, Any]]:
        floor = f"{since.astimezone(UTC):%Y-%m-%d}" if since else ""
        order = "DESC" if newest_first else "ASC"
        compare = "<" if newest_first else ">"
        last: int | None = None
        while True:  # keyset pages: no transaction held open between pages
            with self._db() as conn:
                rows = conn.execute(
                    f"SELECT seq, data FROM {SCHEMA}.records WHERE day >= %s "
                    + (f"AND seq {compare} %s " if last is not None else "")
                    + f"ORDER BY seq {order} LIMIT 2000",
                    (floor, last) if last is not None else (floor,),
                ).fetchall()
            if not rows:
                return
            for seq, data in rows:
                last = seq
                yield data

    def records_mark(self, moment: datetime) -> str | None:
        return None  # leases decide recovery here; the lookup below needs no mark

    def finished_records(
        self, items: Iterable[QueueItem], now: datetime
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """One query for every item (not a scan of the days' records per orphan)."""
        wanted = {(item.run_id, item.attempt): item for item in items}
        if not wanted:
            return {}
        floor = min(
            (datetime.fromisoformat(i.started_at) if i.started_at else now) for i in wanted.values()
        ) - timedelta(days=1)
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT data FROM {SCHEMA}.records WHERE day >= %s "
                "AND data->>'event' = 'attempt_finished' AND data->>'run_id' = ANY(%s) "
                "ORDER BY seq",
                (f"{floor.astimezone(UTC):%Y-%m-%d}", sorted({r for r, _ in wanted})),
            ).fetchall()
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for (data,) in rows:
            ident = (data.get("run_id"), data.get("attempt"))
            if ident in wanted:
                found.setdefault((str(ident[0]), int(ident[1])), data)
        return found

    @_again_once
    def record_days(self) -> dict[str, tuple[int, int]]:
        """Each UTC day with records -> (count, newest seq): changes when the day changes."""
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT day, count(*), max(seq) FROM {SCHEMA}.records GROUP BY day ORDER BY day"
            ).fetchall()
        return {day: (int(count), int(top)) for day, count, top in rows}

    def day_records(self, day: str) -> Iterator[dict[str, Any]]:
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT data FROM {SCHEMA}.records WHERE day = %s ORDER BY seq", (day,)
            ).fetchall()
        for (data,) in rows:
            yield data

    @_again_once
    def day_records_after(self, day: str, mark: int) -> tuple[list[dict[str, Any]], int]:
        """The records of one UTC day after `mark` (0, or a mark this returned), oldest first,
        and the mark to pass next time (the newest `seq` read). A record of a transaction that
        commits after a later one's is behind the mark: readers compare counts
        (`record_days`) and read the day again when one is missing (query.DayCache)."""
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT seq, data FROM {SCHEMA}.records WHERE day = %s AND seq > %s ORDER BY seq",
                (day, mark),
            ).fetchall()
        return [data for _, data in rows], max((int(seq) for seq, _ in rows), default=mark)

    def log_path(self, run_id: str, attempt: int) -> Path:
        return records_mod.log_path(self.local_dir / "logs", run_id, attempt)

    def count(self, name: str, by: int = 1) -> None:
        with self._db() as conn:
            conn.execute(
                f"INSERT INTO {SCHEMA}.counters (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET "
                f"value = {SCHEMA}.counters.value + excluded.value",
                (name, by),
            )

    @_again_once
    def counters(self) -> dict[str, int]:
        with self._db() as conn:
            rows = conn.execute(f"SELECT name, value FROM {SCHEMA}.counters").fetchall()
        return {name: int(value) for name, value in rows}

    @_again_once
    def put_dead_letter(self, entry: Mapping[str, Any]) -> None:
        self._put_entry("dead_letters", entry)

    @_again_once
    def dead_letters(self) -> list[dict[str, Any]]:
        return self._entries("dead_letters")

    @_again_once
    def dead_letter(self, entry_id: str) -> dict[str, Any] | None:
        return self._entry("dead_letters", entry_id)

    @_again_once
    def put_review(self, entry: Mapping[str, Any]) -> None:
        self._put_entry("reviews", entry)

    @_again_once
    def reviews(self) -> list[dict[str, Any]]:
        return self._entries("reviews")

    @_again_once
    def review(self, entry_id: str) -> dict[str, Any] | None:
        return self._entry("reviews", entry_id)

    def hold_key(self, key: str, note: str, seconds: float) -> Callable[[], None] | None:
        token = uuid.uuid4().hex
        with self._db() as conn, conn.transaction():
            conn.execute(
                f"UPDATE {SCHEMA}.leases SET released_at = clock_timestamp(), "
                "release_reason = 'expired' WHERE key = %s AND released_at IS NULL "
                "AND expires_at < clock_timestamp()",
                (key,),
            )
            row = conn.execute(
                f"INSERT INTO {SCHEMA}.leases (key, token, host, pid, note, expires_at) "
                "VALUES (%s, %s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT DO NOTHING RETURNING id",
                (
                    key,
                    token,
                    os.environ.get("AGENTJOBS_HOST") or os.uname().nodename,
                    os.getpid(),
                    note,
                    seconds,
                ),
            ).fetchone()
        if row is None:
            return None

        def release() -> None:
            with self._db() as conn:
                conn.execute(
                    f"UPDATE {SCHEMA}.leases SET released_at = clock_timestamp(), "
                    "release_reason = 'done' WHERE token = %s AND released_at IS NULL",
                    (token,),
                )

        return release

    def _put_entry(self, table: str, entry: Mapping[str, Any]) -> None:
        """A row per entry (dead letters, reviews): its id and its JSON."""
        with self._db() as conn:
            conn.execute(
                f"INSERT INTO {SCHEMA}.{table} (id, data) VALUES (%s, %s) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                (entry["id"], json.dumps(dict(entry))),
            )

    def _entries(self, table: str) -> list[dict[str, Any]]:
        with self._db() as conn:
            rows = conn.execute(f"SELECT data FROM {SCHEMA}.{table} ORDER BY id").fetchall()
        return [data for (data,) in rows]

    def _entry(self, table: str, entry_id: str) -> dict[str, Any] | None:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT data FROM {SCHEMA}.{table} WHERE id = %s", (entry_id,)
            ).fetchone()
        return None if row is None else dict(row[0])

    def prune_logs(self, older_than: float, keep: set[str]) -> int:
        return records_mod.prune_logs(self.local_dir / "logs", older_than, keep)

    def archive_records(self, before_day: str) -> int:
        """Move the records of days before `before_day` into `records_archive` (out of the way
        of `records()`, still in the database). Returns how many days moved."""
        with self._db() as conn, conn.transaction():
            row = conn.execute(
                f"WITH moved AS (DELETE FROM {SCHEMA}.records WHERE day < %s "
                "RETURNING seq, day, data), kept AS ("
                f"INSERT INTO {SCHEMA}.records_archive SELECT seq, day, data FROM moved "
                "RETURNING day) SELECT count(DISTINCT day) FROM kept",
                (before_day,),
            ).fetchone()
        return int(row[0]) if row else 0

    @_again_once
    def read_json(self, name: str) -> Any:
        with self._db() as conn:
            row = conn.execute(f"SELECT value FROM {SCHEMA}.side WHERE name = %s", (name,))
            found = row.fetchone()
        return None if found is None else found[0]

    @_again_once
    def write_json(self, name: str, value: Any) -> None:
        with self._db() as conn:
            conn.execute(
                f"INSERT INTO {SCHEMA}.side (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(value)),
            )

    # -- the notification outbox -----------------------------------------------------------

    def outbox_put(self, events: Iterable[OutboxEvent]) -> None:
        rows = [(e.id, json.dumps(e.to_dict())) for e in events]
        if not rows:
            return
        with self._db() as conn, conn.cursor() as cur:  # this thread's transaction, if any
            cur.executemany(
                f"INSERT INTO {SCHEMA}.outbox (id, data) VALUES (%s, %s) "
                "ON CONFLICT (id) DO NOTHING",
                rows,
            )

    def _outbox_rows(self, undelivered: bool, limit: int) -> list[OutboxEvent]:
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT data FROM {SCHEMA}.outbox WHERE undelivered = %s ORDER BY id LIMIT %s",
                (undelivered, limit),
            ).fetchall()
        return [OutboxEvent.from_dict(data) for (data,) in rows]

    @_again_once
    def outbox_pending(self, limit: int) -> list[OutboxEvent]:
        return self._outbox_rows(False, limit)

    @_again_once
    def outbox_undelivered(self, limit: int) -> list[OutboxEvent]:
        return self._outbox_rows(True, limit)

    def outbox_done(self, event_id: str) -> None:
        with self._db() as conn:
            conn.execute(
                f"DELETE FROM {SCHEMA}.outbox WHERE id = %s AND NOT undelivered", (event_id,)
            )

    def _outbox_fail(self, event_id: str, error: str, next_at: str | None) -> None:
        with self._db() as conn:
            conn.execute(
                f"UPDATE {SCHEMA}.outbox SET undelivered = %s, data = data || jsonb_build_object("
                "'tries', (data->>'tries')::int + 1, 'error', %s::text, "
                "'next_at', coalesce(%s::text, data->>'next_at')) "
                "WHERE id = %s AND NOT undelivered",
                (next_at is None, error, next_at, event_id),
            )

    def outbox_retry(self, event_id: str, next_at: str, error: str) -> None:
        self._outbox_fail(event_id, error, next_at)

    def outbox_dead(self, event_id: str, error: str) -> None:
        self._outbox_fail(event_id, error, None)

    @_again_once
    def outbox_counts(self) -> tuple[int, int]:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT count(*) FILTER (WHERE NOT undelivered), count(*) FILTER (WHERE "
                f"undelivered) FROM {SCHEMA}.outbox"
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # -- running attempts' progress (progress.py) -------------------------------------------

    def put_progress(self, run_id: str, attempt: int, data: Mapping[str, Any]) -> None:
        with self._db() as conn:
            conn.execute(
                f"INSERT INTO {SCHEMA}.progress (run_id, attempt, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (run_id) DO UPDATE SET attempt = excluded.attempt, "
                "data = excluded.data, updated_at = now()",
                (run_id, attempt, json.dumps(dict(data))),
            )

    @_again_once
    def progress(self) -> dict[str, dict[str, Any]]:
        with self._db() as conn:
            rows = conn.execute(f"SELECT run_id, attempt, data FROM {SCHEMA}.progress").fetchall()
        return {run_id: {**data, "attempt": attempt} for run_id, attempt, data in rows}

    @_again_once
    def clear_progress(self, run_id: str, attempt: int) -> None:
        with self._db() as conn:
            conn.execute(
                f"DELETE FROM {SCHEMA}.progress WHERE run_id = %s AND attempt <= %s",
                (run_id, attempt),
            )

    # -- leases ----------------------------------------------------------------------------

    def lease_duration(self) -> float:
        from agentjobs.spec import DEFAULT_LEASE

        return float(self.config().get("lease") or DEFAULT_LEASE)

    def renew(self, token: str, duration: float) -> bool:
        """Push the leases of `token` forward; False when they are gone (expired and taken)."""
        with self._db() as conn:
            row = conn.execute(
                f"UPDATE {SCHEMA}.leases SET expires_at = clock_timestamp() + "
                "make_interval(secs => %s) WHERE token = %s AND released_at IS NULL "
                "AND expires_at > clock_timestamp() RETURNING id",
                (duration, token),
            ).fetchall()
        return bool(row)

    @_again_once
    def release_token(self, token: str) -> None:
        with self._db() as conn:
            conn.execute(
                f"UPDATE {SCHEMA}.leases SET released_at = clock_timestamp(), "
                "release_reason = 'done' WHERE token = %s AND released_at IS NULL",
                (token,),
            )

    def hold_from(self, handoff: Mapping[str, Any], fds: Sequence[int]) -> Lease:
        """The lease its tick claimed, renewed and released by the attempt's supervisor."""
        return Lease(self, str(handoff["token"]), float(handoff["duration"]))

    def prepare_keys(self, keys: Iterable[str]) -> None:
        pass  # keys are lease rows, made by the claim

    def orphaned(self, item: QueueItem) -> bool:
        """Across hosts the lease is the only truth: renewed, the attempt lives."""
        return not self.attempt_leased(item.run_id, item.attempt)

    def orphans_possible(self, runtime: Runtime) -> bool:
        """Running items without a live lease (one query, only when something runs)."""
        running = any(i.state == "running" for i in runtime.queue.values())
        return running and self.unleased_running() > 0

    @_again_once
    def attempt_leased(self, run_id: str, attempt: int) -> bool:
        """Whether a live (unexpired) lease covers this attempt."""
        with self._db() as conn:
            row = conn.execute(
                f"SELECT 1 FROM {SCHEMA}.leases WHERE run_id = %s AND attempt = %s "
                "AND released_at IS NULL AND expires_at > clock_timestamp() LIMIT 1",
                (run_id, attempt),
            ).fetchone()
        return row is not None

    @_again_once
    def unleased_running(self) -> int:
        """Running attempts without a live lease: orphans for the next whole-state pass."""
        with self._db() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM {SCHEMA}.queue q WHERE q.state = 'running' AND NOT EXISTS "
                f"(SELECT 1 FROM {SCHEMA}.leases l WHERE l.key = q.lock_key "
                "AND l.released_at IS NULL AND l.expires_at > clock_timestamp())"
            ).fetchone()
        return int(row[0]) if row else 0

    # -- hosts -----------------------------------------------------------------------------

    @_again_once
    def see_host(self, host: str, labels: Iterable[str]) -> None:
        with self._db() as conn:
            conn.execute(
                f"INSERT INTO {SCHEMA}.hosts (host, labels, pid, seen_at) VALUES "
                "(%s, %s, %s, now()) ON CONFLICT (host) DO UPDATE SET labels = excluded.labels, "
                "pid = excluded.pid, seen_at = excluded.seen_at",
                (host, json.dumps(sorted(labels)), os.getpid()),
            )

    @_again_once
    def hosts(self) -> list[dict[str, Any]]:
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT host, labels, pid, seen_at FROM {SCHEMA}.hosts ORDER BY host"
            ).fetchall()
        return [
            {
                "host": host,
                "labels": labels,
                "pid": pid,
                "seen_at": seen.astimezone(UTC).isoformat(timespec="seconds"),
            }
            for host, labels, pid, seen in rows
        ]

    @_again_once
    def host_notes(self) -> dict[str, list[tuple[str, str]]]:
        """Queued item id -> [(host, why it skipped the item)] for items still queued."""
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT n.item_id, n.host, n.reason FROM {SCHEMA}.host_notes n "
                f"JOIN {SCHEMA}.queue q ON q.id = n.item_id AND q.state = 'queued' "
                "ORDER BY n.item_id, n.host"
            ).fetchall()
        notes: dict[str, list[tuple[str, str]]] = {}
        for item_id, host, reason in rows:
            notes.setdefault(item_id, []).append((host, reason))
        return notes

    # -- claims ----------------------------------------------------------------------------

    @_again_once
    def claim(self, request: ClaimRequest) -> Claim | Refusal | None:
        """`request.first` (its own transaction), then the best runnable item across hosts
        (`_claim_once`). When every due item this host could take was row-locked by other
        hosts' claims, look again shortly: they may release some of them (a claim locks its
        batch until it commits), and a tick that gave up here would leave work queued until
        the next tick."""
        if request.first is not None:
            with self.transaction(request.timeout) as runtime:
                go = request.first(runtime)
            if not go:
                return None
        applied = self.applied()
        for round_ in range(CLAIM_ROUNDS):
            claimed = self._claim_once(request, applied)
            if not isinstance(claimed, _Contended):
                return claimed
            time.sleep(0.002 * (round_ + 1))
        return None

    def _claim_once(
        self, request: ClaimRequest, applied: Mapping[str, AppliedJob]
    ) -> Claim | Refusal | _Contended | None:
        """Take the best runnable item across hosts: leases for its key and a slot, marked
        running, in one transaction. Claimers skip each other's rows (`SKIP LOCKED`)."""
        duration = self.lease_duration()
        with self._db() as conn, conn.transaction(), conn.cursor() as cur:
            self._lock_meta(conn, request.timeout, "FOR SHARE")
            if isinstance(request.keep, Lease):
                # the worker's settled attempt hands its slot over: its supervisor keeps only
                # the key lease until it lets go (as a flocked slot moves to the next claim)
                cur.execute(
                    f"UPDATE {SCHEMA}.leases SET released_at = clock_timestamp(), "
                    "release_reason = 'handed over' WHERE token = %s AND released_at IS NULL "
                    "AND key LIKE 'slot:%%'",
                    (request.keep.token,),
                )
            context, busy, leased = self._claim_context(cur)
            ledgered = needs_ledger(request, applied)
            if ledgered:  # locked: budgets and rates hold across hosts
                cur.execute(f"SELECT data FROM {SCHEMA}.ledger WHERE id = 1 FOR UPDATE")
                row = cur.fetchone()
                context.ledger = dict(row[0]) if row else {}
            was = json.dumps(context.ledger, sort_keys=True)
            taken = self._claim_rows(cur, request, applied, context, busy, leased, duration)
            if ledgered and json.dumps(context.ledger, sort_keys=True) != was:
                _put_ledger(cur, context.ledger)
            return taken

    def _claim_rows(
        self,
        cur: psycopg.Cursor[Any],
        request: ClaimRequest,
        applied: Mapping[str, AppliedJob],
        context: Runtime,
        busy: set[str],
        leased: set[str],
        duration: float,
    ) -> Claim | Refusal | _Contended | None:
        """`_claim_once`'s choice among the due rows, in its transaction."""
        only = request.only
        if only is not None:
            cur.execute(
                f"SELECT id, job, lock_key, data::text FROM {SCHEMA}.queue "
                "WHERE id = %s AND state = 'queued' FOR UPDATE SKIP LOCKED",
                (only,),
            )
            batches: Iterable[list[tuple[str, str, str, str]]] = [cur.fetchall()]
        else:
            batches = self._candidates(cur, request.now, busy)
        token = uuid.uuid4().hex
        have_slot = False
        seen: list[str] = []
        for batch in batches:
            for item_id, job, lock_key, data in batch:
                seen.append(item_id)
                allowed = self._why_not(
                    cur, request, applied, context, busy, item_id, job, lock_key
                )
                why = allowed.reason
                if why is not None:
                    if only is not None:
                        return Refusal(why)
                    continue
                if not have_slot:
                    taken = self._take_slots(
                        cur,
                        token,
                        request.host,
                        request.slots,
                        request.host_slots,
                        leased,
                        duration,
                    )
                    if taken is not None:
                        return None if only is None else Refusal(taken)
                    have_slot = True
                item = QueueItem.from_dict(json.loads(data))
                note = request.note(item)
                if not self._take_key(cur, token, request.host, item, duration, note):
                    busy.add(lock_key)
                    if only is not None:
                        cur.execute(f"DELETE FROM {SCHEMA}.leases WHERE token = %s", (token,))
                        return Refusal(self._held_message(cur, lock_key))
                    continue
                changes = claimed(item, applied[item.job], allowed, request, context.ledger)
                running = self._mark_running(cur, request, item, changes)
                return Claim(running, applied[item.job], Lease(self, token, duration))
        if have_slot:
            cur.execute(f"DELETE FROM {SCHEMA}.leases WHERE token = %s", (token,))
        if only is None and self._skipped_rows(cur, request.now, busy, seen):
            return CONTENDED
        return None

    def _why_not(
        self,
        cur: psycopg.Cursor[Any],
        request: ClaimRequest,
        applied: Mapping[str, AppliedJob],
        context: Runtime,
        busy: set[str],
        item_id: str,
        job: str,
        lock_key: str,
    ) -> Allowance:
        """Why this host does not claim a queued row now (its key is busy, `refusal`), or
        None. A reason about this host alone is kept in `host_notes` for `status`."""
        if lock_key in busy:  # who holds it is looked up only for the one item asked for
            return Allowance("busy" if request.only is None else self._held_message(cur, lock_key))
        allowed = refusal(
            applied.get(job),
            context.jobs.get(job),
            context.holds,
            request,
            other_hosts=True,
            ledger=context.ledger,
        )
        reason = allowed.reason
        if reason is not None and reason.startswith("host:"):
            cur.execute(
                f"INSERT INTO {SCHEMA}.host_notes (host, item_id, reason) "
                "VALUES (%s, %s, %s) ON CONFLICT (host, item_id) DO UPDATE "
                "SET reason = excluded.reason, at = now()",
                (request.host, item_id, reason[5:].strip()),
            )
        if reason is None:
            return allowed
        return Allowance(reason.removeprefix("host:").strip())

    def _mark_running(
        self,
        cur: psycopg.Cursor[Any],
        request: ClaimRequest,
        item: QueueItem,
        changes: Mapping[str, Any],
    ) -> QueueItem:
        """The claimed row as running, its job's last start, its host notes gone."""
        now = request.now
        running = QueueItem.from_dict(
            {
                **item.to_dict(),
                "state": "running",
                "started_at": now,
                "host": request.host,
                "pid": request.pid,
                **changes,
            }
        )
        cur.execute(
            f"WITH q AS (UPDATE {SCHEMA}.queue SET state = 'running', data = %s, "
            f"version = nextval('{SCHEMA}.row_version') WHERE id = %s), "
            f"j AS (UPDATE {SCHEMA}.jobs SET data = data || %s, "
            f"version = nextval('{SCHEMA}.row_version') WHERE name = %s) "
            f"DELETE FROM {SCHEMA}.host_notes WHERE item_id = %s",
            (
                json.dumps(running.to_dict()),
                item.id,
                json.dumps({"last_started": now, "last_run_id": item.run_id}),
                item.job,
                item.id,
            ),
        )
        return running

    def _skipped_rows(
        self, cur: psycopg.Cursor[Any], now: str, busy: set[str], seen: list[str]
    ) -> bool:
        """Whether due rows this claim never saw were skipped: locked by other claims."""
        cur.execute(
            f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.queue WHERE state = 'queued' "
            "AND not_before <= %s AND NOT lock_key = ANY(%s::text[]) "
            "AND NOT id = ANY(%s::text[]))",
            (now, list(busy), seen),
        )
        row = cur.fetchone()
        return bool(row is not None and row[0])

    def _claim_context(self, cur: psycopg.Cursor[Any]) -> tuple[Runtime, set[str], set[str]]:
        """One query for what a claim judges by: paused jobs and usage-limit holds (as a
        Runtime), busy lock keys (running items and live key leases), and live slot leases.
        Expired leases are released on the way (anyone may)."""
        cur.execute(
            f"WITH swept AS (UPDATE {SCHEMA}.leases SET released_at = clock_timestamp(), "
            "release_reason = 'expired' WHERE released_at IS NULL "
            "AND expires_at < clock_timestamp() RETURNING 1) "
            f"SELECT 'b', lock_key, NULL FROM {SCHEMA}.queue WHERE state = 'running' "
            f"UNION ALL SELECT 'l', key, NULL FROM {SCHEMA}.leases WHERE released_at IS NULL "
            "AND expires_at >= clock_timestamp() "
            f"UNION ALL SELECT 'p', name, NULL FROM {SCHEMA}.jobs "
            "WHERE (data->>'paused')::boolean "
            f"UNION ALL SELECT 'h', key, until FROM {SCHEMA}.holds "
            "UNION ALL SELECT 's', count(*)::text, NULL FROM swept"
        )
        context = Runtime()
        busy: set[str] = set()
        leased: set[str] = set()
        for kind, key, until in cur.fetchall():
            if kind == "b":
                busy.add(key)
            elif kind == "l":
                (leased if key.startswith("slot:") else busy).add(key)
            elif kind == "p":
                context.jobs[key] = JobState(schedule_hash="", paused=True)
            elif kind == "h":
                context.holds[key] = until
        return context, busy, leased

    def _candidates(
        self, cur: psycopg.Cursor[Any], now: str, busy: set[str]
    ) -> Iterator[list[tuple[str, str, str, str]]]:
        """Queued items that are due, best first, in small batches, each row locked for this
        claim and skipped by the others (`FOR UPDATE SKIP LOCKED`)."""
        after: tuple[int, str, str] = (-1, "", "")
        while True:
            cur.execute(
                f"SELECT id, job, lock_key, data::text, rank, queued_at FROM {SCHEMA}.queue "
                "WHERE state = 'queued' AND not_before <= %s AND NOT lock_key = ANY(%s::text[]) "
                "AND (rank, queued_at, id) > (%s, %s, %s) "
                "ORDER BY rank, queued_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, list(busy), *after, CLAIM_BATCH),
            )
            rows = cur.fetchall()
            if not rows:
                return
            yield [(r[0], r[1], r[2], r[3]) for r in rows]
            last = rows[-1]
            after = (last[4], last[5], last[0])

    def _take_slots(
        self,
        cur: psycopg.Cursor[Any],
        token: str,
        host: str,
        slots: int,
        host_slots: int | None,
        leased: set[str],
        duration: float,
    ) -> str | None:
        """Leases on a slot of this host (with `max_concurrent_per_host`) and a cluster slot;
        None when taken, else why not."""
        if host_slots is not None:
            keys = [f"slot:host:{host}:{i}" for i in range(host_slots)]
            if not self._take_one(cur, keys, leased, token, host, duration):
                return "every slot of this host is in use (max_concurrent_per_host)"
        keys = [f"slot:{i}" for i in range(slots)]
        if not self._take_one(cur, keys, leased, token, host, duration):
            cur.execute(f"DELETE FROM {SCHEMA}.leases WHERE token = %s", (token,))
            return "every concurrency slot is in use"
        return None

    def _take_one(
        self,
        cur: psycopg.Cursor[Any],
        keys: list[str],
        leased: set[str],
        token: str,
        host: str,
        duration: float,
    ) -> bool:
        """Lease one of `keys` not seen leased, in a random order (claimers rarely collide);
        a collision (another claim took it meanwhile) moves on to the next."""
        import random

        free = [key for key in keys if key not in leased]
        random.shuffle(free)
        for key in free:
            cur.execute(
                f"INSERT INTO {SCHEMA}.leases (key, token, host, pid, expires_at) VALUES "
                "(%s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT DO NOTHING RETURNING id",
                (key, token, host, os.getpid(), duration),
            )
            if cur.fetchone() is not None:
                return True
        return False

    def _take_key(
        self,
        cur: psycopg.Cursor[Any],
        token: str,
        host: str,
        item: QueueItem,
        duration: float,
        note: str,
    ) -> bool:
        cur.execute(
            f"INSERT INTO {SCHEMA}.leases "
            "(key, token, host, pid, run_id, attempt, note, expires_at) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT DO NOTHING RETURNING id",
            (item.lock_key, token, host, os.getpid(), item.run_id, item.attempt, note, duration),
        )
        return cur.fetchone() is not None

    def _held_message(self, cur: psycopg.Cursor[Any], key: str) -> str:
        cur.execute(
            f"SELECT data FROM {SCHEMA}.queue WHERE state = 'running' AND lock_key = %s LIMIT 1",
            (key,),
        )
        row = cur.fetchone()
        if row is not None:
            return held_message(key, QueueItem.from_dict(row[0]), with_host=True)
        cur.execute(
            f"SELECT host, run_id, note FROM {SCHEMA}.leases "
            "WHERE key = %s AND released_at IS NULL",
            (key,),
        )
        lease = cur.fetchone()
        if lease is not None:
            holder = f"run {lease[1]}" if lease[1] else lease[2]  # a landing has no run
            return held_message(key, f"{holder} on host {lease[0]}")
        return held_message(key, "another host")


def _delete_rows(
    cur: psycopg.Cursor[Any], table: str, column: str, kind: str, keys: list[str]
) -> None:
    """Delete rows of `jobs` or `queue`, leaving tombstones other processes' copies read."""
    if keys:
        cur.execute(f"DELETE FROM {SCHEMA}.{table} WHERE {column} = ANY(%s)", (keys,))
        cur.execute(
            f"INSERT INTO {SCHEMA}.removed (kind, key) SELECT %s, unnest(%s::text[])",
            (kind, keys),
        )


def _close_all(conns: list[Any], lock: threading.Lock) -> None:
    with lock:
        taken = list(conns)
        conns.clear()
    for conn in taken:
        with contextlib.suppress(Exception):
            conn.close()


def _queue_row(item: QueueItem) -> tuple[Any, ...]:
    return (
        item.id,
        item.job,
        item.slot,
        item.state,
        PRIORITY_RANK.get(item.priority, 1),
        item.queued_at,
        item.not_before,
        item.lock_key,
        json.dumps(item.to_dict()),
    )
