"""The web dashboard (agentjobs/web/) through Starlette's TestClient: pages, the JSON API (the
same data as the query layer and `-o json`), access (token, loopback host), CSRF and the
confirmation step of every action, read-only, escaping of job output, the static report,
that `tick` never imports the web stack, and the review inbox (list, diff view, approve,
reject, retry against real git repositories). The API and actions on both backends (`state`).

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
from agentjobs.web import render, security
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


# -- the review inbox (issue 15) -----------------------------------------------------------------

REVIEWER = "Rev Iewer <rev@example.test>"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def review_repo(root: Path) -> Path:
    """A real repository on branch main with one commit (a.txt: `one`), its user the
    reviewer (what `review.who` records)."""
    repo = root / "work"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Rev Iewer")
    git(repo, "config", "user.email", "rev@example.test")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def review_job(jobs_dir: Path, repo: Path, line: str = "two") -> None:
    """Job `edit`: in its own worktree of `repo`, appends `line` (or, in a run a reviewer sent
    back, their guidance: AGENTJOBS_GUIDANCE) to a.txt; what it did waits for review."""
    script = (
        "import os\n"
        f"line = os.environ.get('AGENTJOBS_GUIDANCE') or {line!r}\n"
        "open('a.txt', 'a').write(line + '\\n')\n"
        "print('appended', line)\n"
    )
    write(
        jobs_dir / "edit.yaml",
        json.dumps(
            {
                "workdir": str(repo),
                "command": [sys.executable, "-c", script],
                "isolation": "worktree",
                "land": {"mode": "review"},
            }
        ),
    )


def awaiting(ajs: Any, state: State, runs: int = 1) -> list[dict[str, Any]]:
    """Apply, run `edit` `runs` times; the inbox entries, oldest first (the API's JSON)."""
    assert ajs("apply").code == 0
    for _ in range(runs):
        done = ajs("run", "edit")
        assert done.code == 0, done.out + done.err
    with state.store() as store:
        from agentjobs import review

        return [e.to_dict() for e in review.inbox(store)]


def reviewed_records(state: State) -> list[dict[str, Any]]:
    return state.records("reviewed")


def test_the_inbox_lists_pending_runs_and_the_api_gives_them_with_their_diff(
    ajs: Any, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    repo = review_repo(tmp_path)
    review_job(jobs_dir, repo)
    first, second = awaiting(ajs, state, runs=2)
    with client(state) as c:
        listing = c.get("/inbox")
        assert listing.status_code == 200
        rows = re.findall(r'<tr class="review-entry" data-run="(\w+)">', listing.text)
        assert rows == [first["run_id"], second["run_id"]]
        assert (
            f"<code>agentjobs/edit/{first['run_id']}</code> &rarr; <code>main</code> (merge)"
            in (listing.text)
        )
        assert listing.text.count("1 file changed, 1 insertion(+)") == 2
        assert 'class="pill o-review o-pending"' in listing.text
        assert re.search(
            r'id="nav-inbox"[^>]*>Inbox <span class="badge count"[^>]*>2<', listing.text
        )
        assert c.get("/api/reviews").json() == [first, second]
        one = c.get(f"/api/reviews/{first['run_id']}").json()
        assert one["status"] == "pending" and one["commit"] == first["commit"]
        assert "\n+two\n" in one["diff"] and one["diff"].startswith("diff --git a/a.txt b/a.txt")
        assert c.get("/api/reviews/01AAAAAAAAAAAAAAAAAAAAAAAA").status_code == 404
        assert c.get("/inbox/01AAAAAAAAAAAAAAAAAAAAAAAA").status_code == 404
        # a run page says the run waits, and links to its diff; the outcome is not a failure
        run_page = c.get(f"/runs/{first['run_id']}").text
        assert 'class="pill o-review o-awaiting_review">awaiting_review<' in run_page
        assert f'href="/inbox/{first["run_id"]}">Review the diff…' in run_page
        assert c.get("/api/overview").json()["failed_today"] == []
        job_page = c.get("/jobs/edit").text
        assert re.findall(r'<li><a class="mono" href="/inbox/(\w+)">', job_page) == [
            first["run_id"],
            second["run_id"],
        ]
        assert re.search(
            r'id="card-inbox"><h2>Awaiting review</h2><p class="big">2<', c.get("/").text
        )
        # decided runs are listed with ?all=1 only
        with state.store() as store:
            from agentjobs import review
            from agentjobs.engine import Engine

            review.reject(Engine(store), first["run_id"], "someone", "no")
        assert re.findall(r'data-run="(\w+)">', c.get("/inbox").text) == [second["run_id"]]
        everything = c.get("/inbox?all=1").text
        assert 'class="pill o-bad o-rejected">rejected<' in everything
        assert [e["run_id"] for e in c.get("/api/reviews?all=1").json()] == [
            first["run_id"],
            second["run_id"],
        ]


def test_the_diff_view_colours_each_line_and_escapes_what_the_agent_wrote(
    ajs: Any, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    repo = review_repo(tmp_path)
    evil = '<script>alert("diff")</script><img src=x onerror=alert(1)>'
    review_job(jobs_dir, repo, evil)
    [entry] = awaiting(ajs, state)
    with client(state) as c:
        page = c.get(f"/inbox/{entry['run_id']}").text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert (
        '<span class="d-add">+&lt;script&gt;alert(&#34;diff&#34;)&lt;/script&gt;'
        "&lt;img src=x onerror=alert(1)&gt;</span>" in page
    )
    assert '<span class="d-ctx"> one</span>' in page
    assert '<span class="d-hunk">@@ -1 +1,2 @@</span>' in page
    assert '<span class="d-file">+++ b/a.txt</span>' in page
    assert "style=" not in page  # the CSP allows no inline style: classes only
    assert re.search(r'<pre class="diffstat"> a\.txt \| 1 \+\n 1 file changed', page)
    assert 'href="/inbox/' in page and "Approve…" in page and "Reject…" in page
    # inside a hunk a line is added or removed by its first character: `--- x` is a removal
    lines, cut = render.diff_lines(
        "diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n--- x\n+++ y\n same\n"
        "\\ No newline at end of file\n",
        limit=7,
    )
    assert [kind for kind, _ in lines] == ["file", "file", "file", "hunk", "del", "add", "ctx"]
    assert cut == 1


def test_approve_asks_to_confirm_needs_the_forms_csrf_token_and_lands_the_commit_on_main(
    ajs: Any, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    repo = review_repo(tmp_path)
    review_job(jobs_dir, repo)
    [entry] = awaiting(ajs, state)
    run_id, before = entry["run_id"], git(repo, "rev-parse", "main")
    target = f"/inbox/{run_id}/approve"
    with client(state) as c:
        confirm = c.get(target)
        assert confirm.status_code == 200
        assert "Approve and land" in confirm.text
        # who the record will name
        assert "Rev Iewer &lt;rev@example.test&gt; via the dashboard" in confirm.text
        token = csrf_of(confirm.text)
        assert c.post(target, data={}).status_code == 403
        assert c.post(target, data={"csrf": "0" * 64}).status_code == 403
        foreign = c.post(target, data={"csrf": token}, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert git(repo, "rev-parse", "main") == before  # refused: nothing landed
        assert c.get(f"/api/reviews/{run_id}").json()["status"] == "pending"
        assert not reviewed_records(state)
        done = c.post(target, data={"csrf": token}, headers={"Origin": LOCAL})
        assert (done.status_code, done.headers["location"]) == (
            303,
            f"/inbox/{run_id}?decided=approve",
        )
        # main has exactly the run's commit, merged, and the checkout followed
        assert git(repo, "rev-list", "--no-merges", f"{before}..main").split() == [entry["commit"]]
        assert git(repo, "rev-parse", "main^2") == entry["commit"]
        message = git(repo, "log", "-1", "--format=%B", "main")
        assert f"agentjobs: land edit run {run_id}" in message
        assert f"Approved-by: {REVIEWER} via the dashboard from testclient" in message
        assert (repo / "a.txt").read_text() == "one\ntwo\n"
        decided = c.get(f"/api/reviews/{run_id}").json()
        assert decided["status"] == "approved"
        assert decided["decision"]["landed"] == git(repo, "rev-parse", "main")
        [record] = reviewed_records(state)
        assert (record["run_id"], record["decision"]) == (run_id, "approve")
        assert record["by"].startswith(f"{REVIEWER} via the dashboard")
        page = c.get(done.headers["location"]).text
        assert 'class="pill o-good o-approved">approved<' in page
        assert re.search(r'id="decided">Approved by Rev Iewer', page)
        assert "Approve…" not in page
        # a decision is made once
        again = c.post(target, data={"csrf": token})
        assert again.status_code == 409 and "already decided" in again.text
        assert c.get(target).status_code == 409
    assert len(reviewed_records(state)) == 1


def test_reject_needs_a_note_and_retry_queues_a_run_that_gets_the_guidance(
    ajs: Any, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    repo = review_repo(tmp_path)
    review_job(jobs_dir, repo)
    first, second = awaiting(ajs, state, runs=2)
    with client(state) as c:
        form = c.get(f"/inbox/{first['run_id']}/reject")
        assert '<textarea id="note" name="note" rows="3" required>' in form.text
        token = csrf_of(form.text)
        reject = f"/inbox/{first['run_id']}/reject"
        empty = c.post(reject, data={"csrf": token, "note": "  "})
        assert empty.status_code == 400 and "a note is needed" in empty.text
        assert c.get(f"/api/reviews/{first['run_id']}").json()["status"] == "pending"
        done = c.post(reject, data={"csrf": token, "note": "not <this> way"})
        assert done.status_code == 303
        rejected = c.get(f"/api/reviews/{first['run_id']}").json()
        assert (rejected["status"], rejected["decision"]["note"]) == ("rejected", "not <this> way")
        assert "not &lt;this&gt; way" in c.get(f"/inbox/{first['run_id']}").text
        # retry: guidance needed, a note optional
        form = c.get(f"/inbox/{second['run_id']}/retry").text
        assert 'name="guidance"' in form and 'name="note"' in form
        retry = f"/inbox/{second['run_id']}/retry"
        assert c.post(retry, data={"csrf": token, "guidance": ""}).status_code == 400
        assert not state.queue()
        done = c.post(retry, data={"csrf": token, "guidance": "three", "note": "say three"})
        assert (done.status_code, done.headers["location"]) == (
            303,
            f"/inbox/{second['run_id']}?decided=retry",
        )
        [item] = state.queue()
        assert item.trigger == "review" and item.review is not None
        assert (item.review["of"], item.review["guidance"], item.review["note"]) == (
            second["run_id"],
            "three",
            "say three",
        )
        retried = c.get(f"/api/reviews/{second['run_id']}").json()
        assert (retried["status"], retried["decision"]["retry_run"]) == ("retried", item.run_id)
        page = c.get(done.headers["location"]).text
        assert f'href="/runs/{item.run_id}"' in page and "Sent back by Rev Iewer" in page
    assert ajs("tick").code == 0  # the new run got the guidance
    with client(state) as c:
        again = c.get(f"/api/reviews/{item.run_id}").json()
    assert again["status"] == "pending" and "\n+three\n" in again["diff"]
    assert git(repo, "log", "--format=%s", "main") == "init"  # nothing landed meanwhile


def test_read_only_offers_no_review_action_and_refuses_every_decision(
    ajs: Any, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    repo = review_repo(tmp_path)
    review_job(jobs_dir, repo)
    [entry] = awaiting(ajs, state)
    run_id, before = entry["run_id"], git(repo, "rev-parse", "main")
    with client(state) as c:
        token = csrf_of(c.get(f"/inbox/{run_id}/approve").text)
        cookies = dict(c.cookies)
    with client(state, read_only=True) as c:
        c.cookies.update(cookies)
        page = c.get(f"/inbox/{run_id}").text
        assert "+two" in page and "read-only" in page
        assert "Approve…" not in page and "Review…" not in c.get("/inbox").text
        for action in ("approve", "reject", "retry"):
            assert c.get(f"/inbox/{run_id}/{action}").status_code == 403
            fields = {"csrf": token, "note": "n", "guidance": "g"}
            assert c.post(f"/inbox/{run_id}/{action}", data=fields).status_code == 403
        assert c.get(f"/api/reviews/{run_id}").status_code == 200
    assert git(repo, "rev-parse", "main") == before
    assert not reviewed_records(state) and not state.queue()


def test_an_approve_that_conflicts_or_finds_the_key_held_says_why_and_changes_nothing(
    ajs: Any, jobs_dir: Path, state: State, tmp_path: Path
) -> None:
    repo = review_repo(tmp_path)
    review_job(jobs_dir, repo)
    [entry] = awaiting(ajs, state)
    run_id = entry["run_id"]
    with client(state) as c:
        token = csrf_of(c.get(f"/inbox/{run_id}/approve").text)
        # an agent's job holds the workdir's lock key: approve waits for it
        with state.store() as store:
            release = store.hold_key(store.applied()["edit"].parsed.lock, "a test", 60)
            assert release is not None
            try:
                busy = c.post(f"/inbox/{run_id}/approve", data={"csrf": token})
            finally:
                release()
        assert busy.status_code == 409
        assert "is held (an agent works in" in busy.text
        assert f'href="/inbox/{run_id}" id="back"' in busy.text
        # someone changed the same line on main meanwhile: the merge conflicts
        (repo / "a.txt").write_text("one\nTWO\n")
        git(repo, "commit", "-q", "-am", "the same line, differently")
        head = git(repo, "rev-parse", "main")
        conflict = c.post(f"/inbox/{run_id}/approve", data={"csrf": token})
        assert conflict.status_code == 409
        assert re.search(
            r'<p class="error" id="message">run \w+ does not land on main: merge '
            r"conflicts in a\.txt",
            conflict.text,
        ), conflict.text
        assert git(repo, "rev-parse", "main") == head
        assert git(repo, "status", "--porcelain") == ""
        assert (repo / "a.txt").read_text() == "one\nTWO\n"
        assert c.get(f"/api/reviews/{run_id}").json()["status"] == "pending"
        assert not reviewed_records(state)
