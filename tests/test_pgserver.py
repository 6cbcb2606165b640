"""The PostgreSQL test server (tests/pgserver.py) and its fixtures `pg_server` and `pg_url`."""

from __future__ import annotations

import psycopg
import pytest

from tests import pgserver


def test_pg_url_runs_queries(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_server_url_is_the_postgres_database(pg_server: pgserver.PgServer) -> None:
    assert pg_server.url.startswith("postgresql://")
    with psycopg.connect(pg_server.url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)


def test_new_databases_are_distinct_and_empty(pg_server: pgserver.PgServer) -> None:
    first, second = pg_server.new_database(), pg_server.new_database()
    assert first != second
    with psycopg.connect(first) as conn:
        conn.execute("CREATE TABLE only_in_first (x int)")
    for url in (first, second):
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
            names = conn.execute("SELECT current_database()").fetchone()
        assert tables == ([("only_in_first",)] if url == first else [])
        assert names is not None and url.endswith("/" + names[0])
    pg_server.drop_database(first)
    pg_server.drop_database(second)


def test_restart_breaks_connections_and_serves_new_ones(
    pg_server: pgserver.PgServer, pg_url: str
) -> None:
    before = psycopg.connect(pg_url, autocommit=True)
    try:
        started = before.execute("SELECT pg_postmaster_start_time()").fetchone()
        pg_server.restart()
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
    finally:
        before.close()
    with psycopg.connect(pg_url) as after:
        assert after.execute("SELECT 1").fetchone() == (1,)
        restarted = after.execute("SELECT pg_postmaster_start_time()").fetchone()
    if pg_server.embedded:  # an external server is not restarted, only its backends are ended
        assert restarted != started


def test_stop_then_start_keeps_the_url_and_the_data(pg_server: pgserver.PgServer) -> None:
    if not pg_server.embedded:
        with pytest.raises(NotImplementedError):
            pg_server.stop()
        return
    url = pg_server.new_database()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    pg_server.stop()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()
    finally:
        pg_server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(7,)]
    pg_server.drop_database(url)
