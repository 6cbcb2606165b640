"""Notifications: a real HTTP server on 127.0.0.1 receives webhooks and pings; a real command
receives the event on stdin. Delivery never fails or delays the job."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
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
    assert time.monotonic() - started < 15  # three quick tries, then given up
    assert "notification not delivered" in result.err
    from agentjobs.store.files import FileStore

    assert FileStore(state_dir).counters() == {"notify_failures": 1}


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
