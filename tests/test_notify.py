"""Notifications: a real HTTP server on 127.0.0.1 receives webhooks and pings; a real command
receives the event on stdin. Delivery never fails or delays the job."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self, body: bytes) -> None:
            received.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "body": json.loads(body) if body else None,
                }
            )
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def do_GET(self) -> None:
            self._record(b"")

        def do_POST(self) -> None:
            self._record(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def _job(*actions: str, **fields: Any) -> str:
    return json.dumps({"command": [sys.executable, FAKE, *actions], **fields})


def test_failure_dead_letter_and_pings_reach_the_targets(
    cli, server, jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    url, received = server
    inbox = tmp_path / "inbox.jsonl"
    notify = {
        "events": ["failed", "dead_lettered", "succeeded", "recovered"],
        "webhook": f"{url}/hook",
        "ping_url": f"{url}/ping/abc",
        "command": [
            sys.executable,
            "-c",
            f"import sys; open({str(inbox)!r}, 'a').write(sys.stdin.read() + '\\n')",
        ],
    }
    write(
        jobs_dir / "bad.yaml",
        _job("print", "broken", "exit", "3", notify=notify, retry={"attempts": 1}),
    )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "run", "bad").code == 1
    hooks = [r["body"] for r in received if r["path"] == "/hook"]
    # deliveries run in parallel in the background: their order is not defined
    assert sorted(h["event"] for h in hooks) == ["dead_lettered", "failed"]
    failed = next(h for h in hooks if h["event"] == "failed")
    assert failed["job"] == "bad" and failed["error"] == "exit code 3"
    assert failed["text"].startswith("agentjobs bad failed (attempt 1): exit code 3 [run ")
    run_id = failed["run_id"]
    pings = [r["path"] for r in received if r["path"].startswith("/ping")]
    assert pings == [f"/ping/abc/start?rid={run_id}", f"/ping/abc/fail?rid={run_id}"]
    events = [json.loads(line)["event"] for line in inbox.read_text().splitlines()]
    assert sorted(events) == ["dead_lettered", "failed"]
    # fixed: the next success is a recovery
    write(jobs_dir / "bad.yaml", _job("print", "fine", notify=notify))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "run", "bad").code == 0
    hooks = [r["body"]["event"] for r in received if r["path"] == "/hook"]
    assert sorted(hooks[-2:]) == ["recovered", "succeeded"]
    assert [r["path"] for r in received if r["path"].startswith("/ping")][-1].startswith(
        "/ping/abc?rid="
    )


def test_an_unreachable_target_neither_fails_nor_stalls_the_job(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write(
        jobs_dir / "ok.yaml",
        _job(
            "print",
            "fine",
            notify={"events": ["succeeded"], "webhook": f"http://127.0.0.1:{port}/hook"},
        ),
    )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    started = time.monotonic()
    result = cli(*base, "run", "ok")
    assert result.code == 0
    assert time.monotonic() - started < 15
    assert "notification not delivered yet, will retry" in result.err
    from agentjobs.store.files import FileStore

    store = FileStore(state_dir)
    assert store.outbox_counts() == (1, 0)  # kept for the next tick's try
    (pending,) = store.outbox_pending(10)
    assert (pending.tries, pending.payload["event"]) == (1, "succeeded")
    assert "Connection refused" in (pending.error or "")


def test_events_not_asked_for_are_not_sent(cli, server, jobs_dir: Path, state_dir: Path) -> None:
    url, received = server
    write(jobs_dir / "ok.yaml", _job("print", "fine", notify={"webhook": f"{url}/hook"}))
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "run", "ok").code == 0
    assert received == []  # default events: failed, dead_lettered, silence, timeout


def test_threshold_alerts_go_to_the_global_targets_once_per_crossing(
    cli, server, jobs_dir: Path, state_dir: Path
) -> None:
    url, received = server
    write(
        jobs_dir / "agentjobs.yaml",
        json.dumps(
            {
                "notify": {"webhook": f"{url}/global"},
                "alerts": {"queue_depth": 2, "failure_rate": {"threshold": 0.5, "min_attempts": 3}},
            }
        ),
    )
    for name in ("a", "b", "c"):
        write(
            jobs_dir / f"{name}.yaml",
            _job(
                "exit",
                "1",
                schedule={"every": "1d"},
                lock=name,
                retry={"attempts": 2, "backoff": {"initial": "1h"}},
            ),
        )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "tick").code == 1  # three failures, three retries queued
    alerts = [
        r["body"] for r in received if r["path"] == "/global" and r["body"]["event"] == "alert"
    ]
    assert sorted(a["alert"] for a in alerts) == ["failure_rate", "queue_depth"]
    depth = next(a for a in alerts if a["alert"] == "queue_depth")
    assert (depth["value"], depth["threshold"]) == (3, 2)
    assert depth["text"].startswith("agentjobs (agentjobs) alert: queue_depth is 3 (threshold 2)")
    received.clear()
    write(
        jobs_dir / "d.yaml",
        _job(
            "exit",
            "1",
            schedule={"every": "1d"},
            lock="d",
            retry={"attempts": 2, "backoff": {"initial": "1h"}},
        ),
    )
    assert cli(*base, "apply").code == 0
    assert cli(*base, "tick").code == 1
    again = [r for r in received if r["path"] == "/global" and r["body"]["event"] == "alert"]
    assert again == []  # still over: no repeat (job events still go there: global defaults)
    assert [r["body"]["job"] for r in received if r["path"] == "/global"] == ["d"]


def test_timeout_silence_and_overlap_events(cli, server, jobs_dir: Path, state_dir: Path) -> None:
    url, received = server
    hook = {"webhook": f"{url}/hook", "events": ["timeout", "silence", "skipped_overlap", "failed"]}
    write(
        jobs_dir / "slow.yaml",
        _job(
            "print",
            "x",
            "sleep",
            "5",
            timeout="1s",
            kill_grace="1s",
            notify=hook,
            retry={"attempts": 1},
        ),
    )
    write(
        jobs_dir / "quiet.yaml",
        _job("hang", silence_timeout="1s", kill_grace="1s", notify=hook, retry={"attempts": 1}),
    )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply").code == 0
    assert cli(*base, "run", "slow").code == 1
    assert cli(*base, "run", "quiet").code == 1
    events = sorted((r["body"]["job"], r["body"]["event"]) for r in received)
    assert events == [("quiet", "silence"), ("slow", "timeout")]  # the specific event, once


def test_skipped_overlap_is_notified(cli, server, jobs_dir: Path, state_dir: Path) -> None:
    import subprocess

    url, received = server
    write(
        jobs_dir / "busy.yaml",
        _job(
            "sleep",
            "4",
            schedule={"cron": "* * * * *"},
            notify={"webhook": f"{url}/hook", "events": ["skipped_overlap"]},
        ),
    )
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*base, "apply", "--now", "2026-11-23T11:59:50Z").code == 0
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentjobs",
            "--state-dir",
            str(state_dir),
            "tick",
            "--now",
            "2026-11-23T12:00:05Z",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            runtime = json.loads((state_dir / "runtime.json").read_text())
            if any(i["state"] == "running" for i in runtime["queue"].values()):
                break
            time.sleep(0.05)
        assert cli(*base, "tick", "--now", "2026-11-23T12:01:05Z").code == 0
    finally:
        first.wait(timeout=30)
    bodies = [r["body"] for r in received]
    assert [(b["event"], b["slot"]) for b in bodies] == [
        ("skipped_overlap", "2026-11-23T12:01:00+00:00")
    ]


# -- the outbox: a slow or dead endpoint never loses an event nor holds a tick up (issue 10.8) --


def _hook_server(delay: float = 0.0, status: int = 200) -> tuple[ThreadingHTTPServer, list[Any]]:
    """A webhook on 127.0.0.1 that answers each POST after `delay` seconds with `status`."""
    received: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(delay)
            if status == 200:
                received.append(json.loads(body))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, received


def _failing_jobs(jobs_dir: Path, url: str, count: int) -> None:
    write(jobs_dir / "agentjobs.yaml", json.dumps({"max_concurrent": 4}))
    for n in range(count):
        write(
            jobs_dir / f"j{n:02d}.yaml",
            _job(
                "exit",
                "1",
                schedule={"every": "1d"},
                lock=f"j{n}",
                retry={"attempts": 1},
                notify={"webhook": url, "events": ["failed", "dead_lettered"]},
            ),
        )


def _ticks_at(cli, base: tuple[str, ...], start: datetime, minutes: list[float]) -> list[float]:
    """Tick at `start` + each of `minutes`; returns each tick's wall time."""
    took = []
    for m in minutes:
        began = time.monotonic()
        result = cli(*base, "tick", "--now", (start + timedelta(minutes=m)).isoformat())
        assert result.code in (0, 1), result.err
        took.append(time.monotonic() - began)
    return took


def test_a_slow_webhook_gets_every_event_across_ticks_and_never_holds_a_tick_up(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    httpd, received = _hook_server(delay=4.0)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        _failing_jobs(jobs_dir, url, 20)
        base = ("--jobs-dir", J, "--state-dir", str(state_dir))
        start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
        assert cli(*base, "apply", "--now", start.isoformat()).code == 0
        began = time.monotonic()
        first = cli(*base, "tick", "--now", (start + timedelta(days=1)).isoformat())
        assert first.code == 1  # 20 jobs failed
        jobs_time = time.monotonic() - began
        took = [jobs_time]
        later = start + timedelta(days=1)
        for n in range(1, 12):
            if len({(e["job"], e["event"]) for e in received}) == 40:
                break
            took += _ticks_at(cli, base, later, [n / 10])
        delivered = {(e["job"], e["event"]) for e in received}
        assert len(delivered) == 40  # 20 failed + 20 dead_lettered, each delivered
        assert len({e["id"] for e in received}) == 40  # an id per event: receivers can dedupe
        # the first tick ran 20 jobs (about 1 s each, 4 at a time); every tick after it only
        # delivers: none waits for more than a bounded few seconds on the slow endpoint
        assert max(took[1:], default=0) < 9.0, took
        # the first tick ran the 20 jobs (about 5 s, 4 at a time): their supervisors only
        # write the events, the tick delivers once at its end (not 20 x 4 s under slots)
        assert took[0] < 15.0, took
        from agentjobs.store.files import FileStore

        assert FileStore(state_dir).outbox_counts() == (0, 0)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("endpoint", ["refused", "500"])
def test_a_dead_endpoint_leaves_every_event_counted_as_undelivered(
    cli, jobs_dir: Path, state_dir: Path, endpoint: str
) -> None:
    import socket

    httpd = None
    if endpoint == "500":
        httpd, _ = _hook_server(status=500)
        port = httpd.server_address[1]
    else:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    try:
        _failing_jobs(jobs_dir, f"http://127.0.0.1:{port}/hook", 5)
        base = ("--jobs-dir", J, "--state-dir", str(state_dir))
        start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
        assert cli(*base, "apply", "--now", start.isoformat()).code == 0
        later = start + timedelta(days=1)
        took = _ticks_at(cli, base, later, [0])
        status = cli(*base, "status", "--now", later.isoformat())
        assert "10 notifications pending" in status.out
        # retries with backoff: 5 tries over about 30 minutes, each a later tick's
        took += _ticks_at(cli, base, later, [0.5, 1.2, 3, 5.5, 10, 16, 20, 31.5, 32])
        assert max(took[1:]) < 5.0, took
        status = cli(*base, "status", "--now", (later + timedelta(minutes=33)).isoformat())
        assert "10 notifications undelivered" in status.out
        metrics = cli(*base, "metrics").out
        assert "agentjobs_notifications_undelivered 10" in metrics
        assert "agentjobs_notifications_pending 0" in metrics
        assert "agentjobs_notification_failures_total 10" in metrics
        listed = cli(*base, "-o", "json", "notifications")
        entries = json.loads(listed.out)
        assert len(entries) == 10 and {e["state"] for e in entries} == {"undelivered"}
        assert {e["tries"] for e in entries} == {5}
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()


@pytest.mark.parametrize("backend", ["files", "postgres"])
def test_events_wait_in_the_outbox_until_the_endpoint_comes_back(
    cli,
    jobs_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    import socket

    state = str(tmp_path / "state")
    if backend == "postgres":
        state = request.getfixturevalue("pg_url")
        monkeypatch.setenv("AGENTJOBS_LOCAL_DIR", str(tmp_path / "local"))
    with socket.socket() as probe:  # down for now: nobody listens on this port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _failing_jobs(jobs_dir, f"http://127.0.0.1:{port}/hook", 3)
    base = ("--jobs-dir", J, "--state-dir", state)
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert cli(*base, "apply", "--now", start.isoformat()).code == 0
    later = start + timedelta(days=1)
    first = cli(*base, "tick", "--now", later.isoformat())
    assert first.code == 1 and "notification not delivered yet, will retry" in first.err
    assert "6 notifications pending" in cli(*base, "status", "--now", later.isoformat()).out
    listed = json.loads(cli(*base, "-o", "json", "notifications").out)
    assert {(e["state"], e["tries"]) for e in listed} == {("pending", 1)}
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _recorder(received := []))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        _ticks_at(cli, base, later, [0.5])  # not due yet: the retry is 1 minute on
        assert received == []
        _ticks_at(cli, base, later, [1.5])
        assert sorted((e["job"], e["event"]) for e in received) == sorted(
            (f"j{n:02d}", event) for n in range(3) for event in ("failed", "dead_lettered")
        )
        status = cli(*base, "status", "--now", later.isoformat()).out
        assert "notification" not in status
        assert cli(*base, "notifications").out == "every notification was delivered\n"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _recorder(received: list[Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def test_the_daemon_delivers_what_earlier_ticks_left_in_the_outbox(
    jobs_dir: Path, state_dir: Path
) -> None:
    import signal
    import subprocess

    from agentjobs.store import OutboxEvent
    from agentjobs.store.files import FileStore
    from tests.conftest import run_agentjobs, wait_for

    write(jobs_dir / "idle.yaml", "command: ['true']\nschedule: {cron: '0 0 1 1 *'}\n")
    assert run_agentjobs("--jobs-dir", J, "--state-dir", str(state_dir), "apply").returncode == 0
    received: list[Any] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _recorder(received))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    left = OutboxEvent(
        "01LEFTBYANEARLIERTICK00000",
        "webhook",
        f"http://127.0.0.1:{httpd.server_address[1]}/hook",
        {"event": "failed", "job": "idle", "id": "01LEFTBYANEARLIERTICK00000"},
        stamp,
        stamp,
        tries=1,
    )
    FileStore(state_dir).outbox_put([left])
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agentjobs", "--state-dir", str(state_dir), "daemon"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: received, timeout=20)
        assert [e["id"] for e in received] == [left.id]
        wait_for(lambda: FileStore(state_dir).outbox_counts() == (0, 0))
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=15)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        httpd.shutdown()
        httpd.server_close()
