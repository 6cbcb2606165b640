"""The dashboard for real: `agentjobs ui` (uvicorn) on 127.0.0.1 and a random port, loaded in
Debian's headless Chromium through selenium, against a state of about 50 runs on 3 lock keys
made by real ticks; and a run posted to the JSON API followed through `/api/runs/{id}` and the
`/api/events` stream on both backends; and a run of a `land: {mode: review}` job approved in
the inbox, its commit then on the real repository's main.

Screenshots go to tests/artifacts/ (gitignored). Without selenium or Chromium these tests are
skipped, except under CI=true, where that is a failure (`.ci/run` installs them)."""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentjobs.cli import main
from agentjobs.store import open_store
from tests.conftest import REPO, State, wait_for, write
from tests.test_engine import job

AGENTJOBS = [sys.executable, "-m", "agentjobs"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO / "tests" / "artifacts"


def _browser_or_skip() -> None:
    problem = None
    try:
        import selenium  # noqa: F401
    except ImportError:
        problem = "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if problem is None and not os.access(path, os.X_OK):
            problem = f"{path} is missing (apt-get install chromium chromium-driver)"
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the browser tests cannot run in CI: {problem}", pytrace=False)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


@contextmanager
def ui_server(location: str, jobs_dir: Path, *extra: str) -> Iterator[str]:
    """`agentjobs ui --port 0` in the background; yields its base URL (what it printed)."""
    options = ["--port", "0", "--poll-interval", "0.2", *extra]
    process = subprocess.Popen(
        [*AGENTJOBS, "--state-dir", location, "--jobs-dir", str(jobs_dir), "ui", *options],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        assert found, line + (process.stderr.read() if process.poll() is not None else "")
        yield found.group(1)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
        assert process.returncode in (0, -15), err


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


# -- the state: about 50 runs on 3 lock keys, made by real ticks ---------------------------------


class Fifty:
    """The module's state (file backend): jobs `build` (hourly) and `lint` (every 2 h) on lock
    key repo-a, `docs` (hourly, prints a <script> line) on repo-b, `flaky` (every 3 h, fails,
    two attempts, then dead-lettered) on repo-c, ticked hourly for 17 hours up to now."""

    def __init__(self, root: Path) -> None:
        self.jobs_dir = root / "jobs.d"
        self.state_dir = root / "state"
        self.location = str(self.state_dir)

    def cli(self, *args: str) -> int:
        return main(["--jobs-dir", str(self.jobs_dir), "--state-dir", self.location, *args])

    def records(self, event: str = "attempt_finished") -> list[dict[str, Any]]:
        store = open_store(self.location)
        return [r for r in store.records() if r.get("event") == event]


@pytest.fixture(scope="module")
def fifty(tmp_path_factory: pytest.TempPathFactory) -> Fifty:
    made = Fifty(tmp_path_factory.mktemp("fifty"))
    write(
        made.jobs_dir / "build.yaml",
        job("print", "building", "print", "ok", lock="repo-a", schedule={"cron": "0 * * * *"}),
    )
    write(
        made.jobs_dir / "lint.yaml",
        job("print", "lint ok", lock="repo-a", schedule={"cron": "0 */2 * * *"}),
    )
    write(
        made.jobs_dir / "docs.yaml",
        job(
            "print",
            '<script>alert("agent")</script>',
            "print",
            "docs done",
            lock="repo-b",
            schedule={"cron": "0 * * * *"},
        ),
    )
    write(
        made.jobs_dir / "flaky.yaml",
        job(
            "print",
            "flaky: cannot reach the test database",
            "exit",
            "1",
            lock="repo-c",
            schedule={"cron": "0 */3 * * *"},
            retry={"attempts": 2, "backoff": {"initial": "1m"}},
        ),
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(hours=17)
    assert made.cli("apply", "--now", (start - timedelta(minutes=1)).isoformat()) == 0
    for k in range(17):
        made.cli("tick", "--now", (start + timedelta(hours=k, seconds=5)).isoformat())
    # the last hour's retries (flaky's backoff is a minute) run out before the tests look: a
    # queue left with a retry in it would depend on the hour the tests run at
    made.cli("tick", "--now", (start + timedelta(hours=16, minutes=3)).isoformat())
    assert made.cli("run", "build") == 0  # and one now, in real time
    return made


# -- the browser ---------------------------------------------------------------------------------

_BARS = """
return Array.from(document.querySelectorAll('.lane')).map(function (lane) {
  return {key: lane.getAttribute('data-lane'), bars: Array.from(lane.querySelectorAll('rect.bar'))
    .map(function (r) { var b = r.getBoundingClientRect();
      return [b.left, b.right, r.getAttribute('data-run'), r.getAttribute('data-attempt'),
              r.getAttribute('data-attempts')]; })};
});
"""


def test_the_timeline_has_one_bar_per_attempt_and_no_two_bars_overlap_in_a_lane(
    browser: Any, fifty: Fifty
) -> None:
    attempts = {(r["run_id"], str(r["attempt"])) for r in fifty.records()}
    runs = {run for run, _ in attempts}
    assert len(runs) >= 45 and len(attempts) > len(runs)  # some runs took two attempts
    with ui_server(fifty.location, fifty.jobs_dir) as base:
        browser.get(f"{base}/timeline?span=24h")
        lanes = browser.execute_script(_BARS)
        shot(browser, "timeline")
        assert sorted(lane["key"] for lane in lanes) == ["repo-a", "repo-b", "repo-c"]
        drawn = [(run, attempt) for lane in lanes for *_, run, attempt, n in lane["bars"]]
        assert all(n == "1" for lane in lanes for *_, n in lane["bars"])
        assert len(drawn) == len(attempts) and set(drawn) == attempts
        for lane in lanes:
            spans = sorted((left, right) for left, right, *_ in lane["bars"])
            for (_, right), (left, _) in itertools.pairwise(spans):
                assert right <= left + 0.01, (lane["key"], right, left)
        browser.get(f"{base}/")
        assert browser.find_element("id", "card-dead").text.splitlines()[1] == str(
            len({r["run_id"] for r in fifty.records() if r["next"] == "dead_letter"})
        )
        shot(browser, "overview")


def test_a_run_page_shows_its_log_and_a_script_line_as_text(browser: Any, fifty: Fifty) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    docs = next(r for r in fifty.records() if r["job"] == "docs")
    with ui_server(fifty.location, fifty.jobs_dir) as base:
        browser.get(f"{base}/runs/{docs['run_id']}")
        log = browser.find_element("css selector", "pre.log")
        assert log.text.splitlines() == ['<script>alert("agent")</script>', "docs done"]
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018
        assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
        assert "&lt;script&gt;alert" in browser.page_source
        shot(browser, "run")


def test_a_dead_letter_replayed_through_the_ui_runs_at_the_next_tick(
    browser: Any, fifty: Fifty
) -> None:
    with ui_server(fifty.location, fifty.jobs_dir) as base:
        browser.get(f"{base}/dead-letters")
        shot(browser, "dead-letters")
        entry = browser.find_element("css selector", "tr.dlq-entry").get_attribute("data-entry")
        browser.find_element("css selector", f'tr[data-entry="{entry}"] a.replay').click()
        assert "Replay now" in browser.find_element("id", "confirm").text
        # the same POST without the form's CSRF token is refused, and changes nothing
        status = browser.execute_script(
            "return fetch(arguments[0], {method: 'POST', body: 'csrf=forged', headers: "
            "{'Content-Type': 'application/x-www-form-urlencoded'}}).then(r => r.status)",
            f"{base}/dead-letters/{entry}/replay",
        )
        assert status == 403
        assert not open_store(fifty.location).runtime().queue
        browser.find_element("id", "confirm").click()
        wait_for(lambda: "/runs/" in browser.current_url)
        run_id = browser.current_url.split("/runs/")[1].split("?")[0]
        assert "Queued: the next" in browser.page_source
        queue_now = list(open_store(fifty.location).runtime().queue.values())
        assert [(i.run_id, i.trigger, i.replay_of) for i in queue_now] == [
            (run_id, "replay", entry)
        ]
        tick = subprocess.run(
            [sys.executable, "-m", "agentjobs", "--state-dir", fifty.location, "tick"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert f"[run {run_id}]" in tick.stdout, tick.stdout + tick.stderr
        replayed = [r for r in fifty.records() if r["run_id"] == run_id]
        assert [(r["trigger"], r["attempt"], r["outcome"]) for r in replayed] == [
            ("replay", 1, "failed")
        ]
        browser.get(f"{base}/runs/{run_id}")
        assert (
            "cannot reach the test database" in browser.find_element("css selector", "pre.log").text
        )
        shot(browser, "replayed-run")


# -- the JSON API and the event stream, both backends ---------------------------------------------


def _events(
    url: str, into: queue.Queue[tuple[str, dict[str, Any]]], ready: threading.Event
) -> None:
    """Read server-sent events from `url` into `into` as (event, data) until the stream ends."""
    with urllib.request.urlopen(url, timeout=60) as stream:
        kind, data = "", ""
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                ready.set()
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and kind:
                into.put((kind, json.loads(data)))
                kind, data = "", ""


def test_a_run_posted_to_the_api_is_followed_to_its_end_through_its_status_and_events(
    ajs: Any, jobs_dir: Path, state: State
) -> None:
    write(jobs_dir / "slow.yaml", job("print", "start", "sleep", "1.5", "print", "end"))
    assert ajs("apply").code == 0
    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    ready = threading.Event()
    with ui_server(state.location, jobs_dir) as base:
        threading.Thread(
            target=_events, args=(f"{base}/api/events", events, ready), daemon=True
        ).start()
        assert ready.wait(30)
        request = urllib.request.Request(
            f"{base}/api/jobs/slow/runs",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202
            run_id = json.loads(response.read())["run_id"]
        assert get_json(f"{base}/api/runs/{run_id}")["state"] == "queued"
        tick = subprocess.Popen(
            [sys.executable, "-m", "agentjobs", "--state-dir", state.location, "tick"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        states = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = get_json(f"{base}/api/runs/{run_id}")
            if not states or states[-1] != status["state"]:
                states.append(status["state"])
            if status["finished"]:
                break
            time.sleep(0.1)
        tick.communicate(timeout=60)
        assert states[0] == "queued" and "running" in states and states[-1] == "succeeded"
        assert status["records"][0]["output_tail"] == "start\nend\n"
        seen: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + 20
        while not any(k == "finished" for k, _ in seen) and time.monotonic() < deadline:
            try:
                kind, data = events.get(timeout=1)
            except queue.Empty:
                continue
            if data.get("run_id") == run_id:
                seen.append((kind, data))
        assert [k for k, _ in seen] == ["queued", "started", "finished"]
        assert seen[-1][1]["outcome"] == "succeeded" and seen[-1][1]["job"] == "slow"


# -- the review inbox: approve in the browser, the commit lands -----------------------------------


def test_the_inbox_approve_action_lands_the_runs_commit_on_main(
    browser: Any, tmp_path: Path
) -> None:
    from tests.test_web import git, review_job, review_repo

    repo = review_repo(tmp_path)
    jobs_dir, location = tmp_path / "jobs.d", str(tmp_path / "state")
    review_job(jobs_dir, repo, "<b>bold</b> line")
    cli = [*AGENTJOBS, "--jobs-dir", str(jobs_dir), "--state-dir", location]
    for verb in (["apply"], ["run", "edit"]):
        done = subprocess.run([*cli, *verb], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    [entry] = open_store(location).reviews()
    run_id, before = entry["run_id"], git(repo, "rev-parse", "main")
    with ui_server(location, jobs_dir) as base:
        browser.get(f"{base}/inbox")
        assert browser.find_element("id", "nav-inbox").text == "Inbox 1"
        row = browser.find_element("css selector", "tr.review-entry")
        assert row.get_attribute("data-run") == run_id
        assert "1 file changed, 1 insertion(+)" in row.text
        row.find_element("css selector", "a.open").click()
        wait_for(lambda: browser.current_url.endswith(f"/inbox/{run_id}"))
        added = browser.find_elements("css selector", "pre.diff .d-add")
        assert [a.text for a in added] == ["+<b>bold</b> line"]  # text, not markup
        assert browser.execute_script("return document.querySelectorAll('pre.diff b').length") == 0
        colour = browser.execute_script(
            "return getComputedStyle(arguments[0]).backgroundColor", added[0]
        )
        assert colour not in ("rgba(0, 0, 0, 0)", "transparent")  # the stylesheet colours it
        shot(browser, "review-diff")
        browser.find_element("id", "approve").click()
        wait_for(lambda: browser.current_url.endswith(f"/inbox/{run_id}/approve"))
        assert browser.find_element("id", "confirm").text == "Approve and land"
        assert git(repo, "rev-parse", "main") == before  # asking changed nothing
        browser.find_element("id", "confirm").click()
        wait_for(lambda: "decided=approve" in browser.current_url)
        assert browser.find_element("id", "review-status").text == "approved"
        assert browser.find_element("id", "decided").text.startswith("Approved by Rev Iewer")
        shot(browser, "review-approved")
        assert browser.find_elements("id", "approve") == []
    # the real repository: main has exactly the run's commit, merged by the approval
    assert git(repo, "rev-list", "--no-merges", f"{before}..main").split() == [entry["commit"]]
    log = git(repo, "log", "--format=%H %P%n%B", "-1", "main")
    assert entry["commit"] in log.splitlines()[0].split()[2:]  # the merge's second parent
    assert "Approved-by: Rev Iewer <rev@example.test> via the dashboard" in log
    assert (repo / "a.txt").read_text() == "one\n<b>bold</b> line\n"
