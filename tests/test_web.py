"""The web dashboard (agentjobs/web/) through Starlette's TestClient: pages, the JSON API (the
same data as the query layer and `-o json`), access (token, loopback host), CSRF and the
confirmation step of every action, read-only, escaping of job output, the static report, and
that `tick` never imports the web stack. The API and actions on both backends (`state`).

A real server and a real browser: tests/test_web_browser.py."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from agentjobs import query
from agentjobs.store import open_store
from agentjobs.web import security
from agentjobs.web.app import create_app
from tests.conftest import REPO, State, run_agentjobs, write
from tests.test_engine import job

LOCAL = "http://127.0.0.1"
AGENTJOBS = [sys.executable, "-m", "agentjobs"]


@contextmanager
def client(state: State, base_url: str = LOCAL, **options: Any) -> Iterator[TestClient]:
    """A TestClient on the dashboard of `state` (lifespan run: the store is closed after)."""
    app = create_app(lambda: open_store(state.location), **options)
    with TestClient(app, base_url=base_url, follow_redirects=False) as c:
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html[:500]
    return found.group(1)


def dead_letter(ajs: Any, jobs_dir: Path, state: State) -> str:
    """A job `broken` that fails once and is dead-lettered; its entry id."""
    write(jobs_dir / "broken.yaml", job("print", "boom", "exit", "3"))
    assert ajs("apply").code == 0
    assert ajs("run", "broken").code == 1
    entries = state.dead_letters()
    assert len(entries) == 1
    return str(entries[0]["id"])


# -- pages and the API --------------------------------------------------------------------------


def test_every_page_renders_and_the_api_gives_the_query_layers_data(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "hello.yaml", job("print", "hello", schedule={"every": "1h"}))
    entry = dead_letter(ajs, jobs_dir, state)
    assert ajs("tick").code == 0
    with client(state) as c:
        for path in ("/", "/timeline", "/timeline?span=6h", "/timeline?span=7d", "/history"):
            page = c.get(path)
            assert page.status_code == 200, (path, page.text[:300])
            assert page.headers["content-type"].startswith("text/html")
        assert "hello" in c.get("/jobs/hello").text
        assert entry in c.get("/dead-letters").text
        assert c.get(f"/runs/{entry}").status_code == 200
        assert c.get("/jobs/nope").status_code == 404
        assert c.get("/runs/01AAAAAAAAAAAAAAAAAAAAAAAA").status_code == 404
        with state.store() as store:
            now = datetime.now(UTC)
            rows = query.as_json(query.jobs(store, now))
            detail = query.as_json(query.describe(store, "hello", now))
        assert c.get("/api/jobs").json() == rows
        api = c.get("/api/jobs/hello").json()
        assert {k: v for k, v in api.items() if k != "fire_times"} == {
            k: v for k, v in detail.items() if k != "fire_times"
        }
        assert c.get("/api/jobs/nope").status_code == 404
        run = c.get(f"/api/runs/{entry}").json()
        assert (run["state"], run["finished"], run["job"]) == ("dead_lettered", True, "broken")
        assert run["records"][0]["outcome"] == "failed"
        overview = c.get("/api/overview").json()
        assert len(overview["dead_letters"]) == 1 and overview["failed_today"]
        lanes = c.get("/api/timeline").json()["lanes"]
        assert sum(len(lane["bars"]) for lane in lanes) == len(state.records("attempt_finished"))


def test_a_run_posted_to_the_api_gets_its_id_at_once_and_is_followed_to_its_end(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "quick.yaml", job("print", "done"))
    assert ajs("apply").code == 0
    with client(state) as c:
        started = time.monotonic()
        posted = c.post("/api/jobs/quick/runs", json={})
        assert time.monotonic() - started < 5
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["run_id"]
        assert posted.headers["location"] == f"/api/runs/{run_id}"
        queued = c.get(f"/api/runs/{run_id}").json()
        assert (queued["state"], queued["finished"]) == ("queued", False)
        assert queued["wait"]["kind"] == "ready"
        assert ajs("tick").code == 0
        done = c.get(f"/api/runs/{run_id}").json()
        assert (done["state"], done["finished"], done["attempts"]) == ("succeeded", True, 1)
        assert done["records"][0]["output_tail"] == "done\n"
        missing = c.post("/api/jobs/nope/runs", json={})
        assert missing.status_code == 404
        assert "no applied job named 'nope'" in missing.json()["error"]


# -- access --------------------------------------------------------------------------------------


def test_with_a_token_every_request_needs_it_as_bearer_or_session_cookie(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "a.yaml", job("print", "x"))
    assert ajs("apply").code == 0
    token = "t0ken-" + "x" * 30
    with client(state, token=token, base_url="http://10.1.2.3:8765") as c:
        for path in ("/", "/api/jobs", "/static/app.js", "/api/events"):
            refused = c.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == 'Bearer realm="agentjobs"'
        assert "access token is needed" in c.get("/api/jobs").json()["error"]
        assert c.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()[0]["job"] == "a"
        assert c.get("/login?token=wrong").status_code == 401
        login = c.get(f"/login?token={token}")
        assert (login.status_code, login.headers["location"]) == (303, "/")
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert token not in cookie  # an HMAC of it, not the token
        assert c.get("/").status_code == 200  # the cookie jar has the session now


def test_without_a_token_only_a_loopback_host_name_is_answered(state: State) -> None:
    with client(state, base_url="http://localhost:8765") as c:
        assert c.get("/api/jobs").status_code == 200
    with client(state, base_url="http://[::1]:8765") as c:
        assert c.get("/api/jobs").status_code == 200
    # a rebinding attacker's name resolving to 127.0.0.1
    with client(state, base_url="http://evil.example:8765") as c:
        refused = c.get("/api/jobs")
        assert refused.status_code == 400
        assert "loopback host name only" in refused.json()["error"]


def test_the_token_is_made_once_kept_0600_and_printed_once(tmp_path: Path) -> None:
    token, created = security.load_or_create_token(tmp_path / "local")
    assert created and len(token) >= 40
    path = tmp_path / "local" / "ui-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert security.load_or_create_token(tmp_path / "local") == (token, False)
    os.chmod(path, 0o644)
    assert security.load_or_create_token(tmp_path / "local") == (token, False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert security.is_loopback("127.0.0.1") and security.is_loopback("::1")
    assert security.is_loopback("localhost") and not security.is_loopback("0.0.0.0")
    assert security.host_name("[::1]:80") == "::1" and security.host_name("a.b:1") == "a.b"


def test_ui_on_another_address_prints_the_token_once_and_stores_it_0600(state_dir: Path) -> None:
    state_dir.mkdir()
    lines = []
    for _ in range(2):
        process = subprocess.Popen(
            [*AGENTJOBS, "--state-dir", str(state_dir), "ui", "--host", "0.0.0.0", "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert process.stderr is not None
            said = [process.stderr.readline(), process.stderr.readline()]
            lines.append(said)
        finally:
            process.terminate()
            process.communicate(timeout=20)
    token = (state_dir / "ui-token").read_text().strip()
    assert stat.S_IMODE((state_dir / "ui-token").stat().st_mode) == 0o600
    assert " INFO    ui: serving " in lines[0][0]  # loguru: time, level, source
    assert lines[0][1].strip().endswith(token)
    assert token not in "".join(lines[1])
    assert f"access token: in {state_dir / 'ui-token'}" in lines[1][1]


# -- actions: confirmation, CSRF, read-only ------------------------------------------------------


def test_replay_asks_to_confirm_and_needs_the_forms_csrf_token(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    entry = dead_letter(ajs, jobs_dir, state)
    with client(state) as c:
        confirm = c.get(f"/dead-letters/{entry}/replay")
        assert confirm.status_code == 200
        assert "Replay now" in confirm.text
        token = csrf_of(confirm.text)
        assert state.dead_letters()[0]["status"] == "open"  # asking changed nothing
        target = f"/dead-letters/{entry}/replay"
        assert c.post(target, data={}).status_code == 403
        assert c.post(target, data={"csrf": "0" * 64}).status_code == 403
        foreign = c.post(target, data={"csrf": token}, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert state.dead_letters()[0]["status"] == "open"
        assert not state.queue()
        done = c.post(target, data={"csrf": token}, headers={"Origin": LOCAL})
        assert done.status_code == 303
        run_id = done.headers["location"].split("/runs/")[1].split("?")[0]
        assert [(i.run_id, i.trigger, i.replay_of) for i in state.queue()] == [
            (run_id, "replay", entry)
        ]
        assert state.dead_letters()[0]["status"] == "replayed"
        page = c.get(done.headers["location"])
        assert "Queued: the next" in page.text
        # another browser (no CSRF cookie) cannot use this page's token
        c.cookies.clear()
        assert c.post(f"/dead-letters/{entry}/resolve", data={"csrf": token}).status_code == 403


def test_resolve_takes_a_note_and_run_now_enqueues_after_confirming(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    entry = dead_letter(ajs, jobs_dir, state)
    with client(state) as c:
        form = c.get(f"/dead-letters/{entry}/resolve")
        token = csrf_of(form.text)
        assert '<textarea id="note" name="note"' in form.text
        empty = c.post(f"/dead-letters/{entry}/resolve", data={"csrf": token, "note": " "})
        assert empty.status_code == 400
        done = c.post(f"/dead-letters/{entry}/resolve", data={"csrf": token, "note": "fixed <b>"})
        assert (done.status_code, done.headers["location"]) == (
            303,
            f"/dead-letters?resolved={entry}",
        )
        resolved = state.dead_letters()[0]
        assert (resolved["status"], resolved["note"]) == ("resolved", "fixed <b>")
        again = c.post(f"/dead-letters/{entry}/resolve", data={"csrf": token, "note": "again"})
        assert again.status_code == 409 and "already resolved" in again.text
        listing = c.get("/dead-letters?all=1").text
        assert "fixed &lt;b&gt;" in listing and "fixed <b>" not in listing
        assert "Run now" in c.get("/jobs/broken/run").text
        ran = c.post("/jobs/broken/run", data={"csrf": token})
        assert ran.status_code == 303
        assert [i.trigger for i in state.queue()] == ["manual"]


def test_read_only_offers_no_action_and_refuses_every_post(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    entry = dead_letter(ajs, jobs_dir, state)
    with client(state) as c:
        token = csrf_of(c.get(f"/dead-letters/{entry}/replay").text)
        cookies = dict(c.cookies)
    with client(state, read_only=True) as c:
        c.cookies.update(cookies)
        page = c.get("/dead-letters").text
        assert entry in page and "Replay…" not in page and "read-only" in page
        assert "Run now" not in c.get("/jobs/broken").text
        assert c.get(f"/dead-letters/{entry}/replay").status_code == 403
        assert c.post(f"/dead-letters/{entry}/replay", data={"csrf": token}).status_code == 403
        assert c.post("/jobs/broken/run", data={"csrf": token}).status_code == 403
        assert c.post("/api/jobs/broken/runs", json={}).status_code == 403
    assert state.dead_letters()[0]["status"] == "open" and not state.queue()


def test_the_api_refuses_a_post_another_site_could_make(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "a.yaml", job("print", "x"))
    assert ajs("apply").code == 0
    with client(state) as c:
        form = c.post("/api/jobs/a/runs", data={"x": "1"})  # a cross-site <form> can send this
        assert form.status_code == 403 and "application/json" in form.json()["error"]
        other = c.post("/api/jobs/a/runs", json={}, headers={"Origin": "http://evil.example"})
        assert other.status_code == 403
        assert not state.queue()
        assert c.post("/api/jobs/a/runs", json={}, headers={"Origin": LOCAL}).status_code == 202


def test_job_output_and_names_are_escaped_and_secrets_are_not_shown(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    evil = '<script>alert("agent")</script><img src=x onerror=alert(1)>'
    write(
        jobs_dir / "echo.yaml",
        job(
            "print",
            evil,
            "exit",
            "1",
            env={"API_TOKEN": "s3cr3t-value", "MODE": "fast"},
            schedule={"every": "1h"},
        ),
    )
    assert ajs("apply").code == 0
    assert ajs("tick").code == 1  # failed: a dead letter too
    run_id = state.records("attempt_finished")[0]["run_id"]
    with client(state) as c:
        pages = [
            c.get(f"/runs/{run_id}").text,
            c.get(f"/runs/{run_id}?raw=1").text,
            c.get("/").text,
            c.get("/dead-letters").text,
            c.get("/jobs/echo").text,
            c.get("/history").text,
        ]
        run_page = pages[0]
        assert "&lt;script&gt;alert(&#34;agent&#34;)&lt;/script&gt;" in run_page
        for html in pages:
            assert "<script>alert" not in html and "<img src=x" not in html
            assert "s3cr3t-value" not in html
        assert '"API_TOKEN": "***"' in pages[4].replace("&#34;", '"')
        assert '"MODE": "fast"' in pages[4].replace("&#34;", '"')
        log = c.get(f"/runs/{run_id}/attempts/1/log")
        assert log.headers["content-type"] == "text/plain; charset=utf-8"
        assert log.headers["x-content-type-options"] == "nosniff"
        assert evil in log.text
        csp = c.get("/").headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp


# -- the static report and the lean tick ---------------------------------------------------------


def test_report_html_is_one_self_contained_file(ajs: Any, jobs_dir: Path, state: State) -> None:
    write(jobs_dir / "hello.yaml", job("print", "<script>x</script>", schedule={"every": "1h"}))
    dead_letter(ajs, jobs_dir, state)
    assert ajs("tick").code == 0
    target = Path("report.html")
    done = ajs("report", "--html", str(target))
    assert done.code == 0, done.err
    assert done.out.startswith("wrote report.html (")
    html = target.read_text()
    assert html.startswith("<!doctype html>")
    assert "<style>" in html and "/static/" not in html and 'href="/' not in html
    assert "src=" not in html.replace("<script>x", "")  # no external resource of any kind
    assert "<script>x</script>" not in html
    assert html.count('class="bar ') == len(state.records("attempt_finished"))
    assert "Open dead letters by cause" in html and "exit code N" in html
    assert json.loads(ajs("report", "--html", str(target), "-o", "json").out)["bytes"] > 1000


def test_tick_and_status_do_not_import_the_web_stack(
    jobs_dir: Path, state_dir: Path, bytecode_cache: None
) -> None:
    write(jobs_dir / "a.yaml", job("print", "x", schedule={"every": "1h"}))
    assert (
        run_agentjobs(
            "--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "apply"
        ).returncode
        == 0
    )
    probe = (
        "import sys\nfrom agentjobs.cli import main\n"
        f"main(['--state-dir', {str(state_dir)!r}, sys.argv[1]])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'starlette', 'uvicorn', 'jinja2', 'anyio', 'httpx2', 'agentjobs.web'}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('agentjobs.web')))\n"
    )
    for verb in ("tick", "status"):
        done = subprocess.run(
            [sys.executable, "-c", probe, verb],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        assert done.stdout.splitlines()[-2:] == ["[]", "[]"], (verb, done.stdout, done.stderr)


def test_a_run_page_shows_verify_apart_and_the_worktree_branch_with_its_diffstat(
    aj: Any, jobs_dir: Path, state_dir: Path
) -> None:
    repo = jobs_dir.parent
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        if args[0] == "add":
            (repo / "README").write_text("hello\n")
        subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@x", *args],
            check=True,
            capture_output=True,
        )
    script = (
        "from pathlib import Path; Path('made.txt').write_text('one\\ntwo\\n'); print('did it')"
    )
    write(
        jobs_dir / "iso.yaml",
        json.dumps(
            {
                "command": [sys.executable, "-c", script],
                "workdir": "..",
                "isolation": "worktree",
                "verify": [
                    sys.executable,
                    str(REPO / "tests" / "fake_agent.py"),
                    "print",
                    "3 checks ok",
                ],
            }
        ),
    )
    assert aj("apply").code == 0
    assert aj("run", "iso").code == 0
    state = State.files(state_dir)
    [finished] = state.records("attempt_finished")
    run_id = finished["run_id"]
    with client(state) as c:
        page = c.get(f"/runs/{run_id}").text
    assert re.search(r'<pre class="log verify">3 checks ok\n</pre>', page), page
    assert f"agentjobs/iso/{run_id}" in page
    assert re.search(r"made\.txt \| 2 \+\+", page), page


def test_a_lock_key_with_markup_is_escaped_in_the_timeline_and_its_data(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    lock = "</script><script>alert('key')</script>&"
    write(jobs_dir / "odd.yaml", job("print", "x", lock=lock))
    assert ajs("apply").code == 0
    assert ajs("run", "odd").code == 0
    with client(state) as c:
        page = c.get("/timeline").text
    assert "<script>alert" not in page and "</script><script>" not in page
    data = re.search(r'<script type="application/json" class="timeline-data">(.*?)</script>', page)
    assert data is not None
    lanes = json.loads(data.group(1))["lanes"]
    assert [lane["key"] for lane in lanes] == [lock]
    assert len(lanes[0]["bars"]) == 1


def test_a_running_attempt_shows_its_progress_on_the_run_page_and_in_the_api(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    from tests.conftest import wait_for
    from tests.test_engine import _spawn

    write(jobs_dir / "long.yaml", job("print", "::progress 40 copying", "sleep", "4"))
    assert ajs("apply").code == 0
    runner = _spawn(state.location, "run", "long")
    try:
        wait_for(lambda: state.queue("running"))
        run_id = state.queue("running")[0].run_id
        with client(state) as c:
            wait_for(lambda: "40% copying" in c.get(f"/runs/{run_id}").text, timeout=10)
            status = c.get(f"/api/runs/{run_id}").json()
        assert status["state"] == "running" and status["progress"]["attempt"] == 1
        assert status["wait"]["progress_text"].startswith("40% copying")
    finally:
        runner.communicate(timeout=30)
