"""The real agent CLIs, end to end (issue 12): each pinned CLI (tests/realclis/package.json,
installed with `npm ci --prefix tests/realclis`) runs through `agentjobs apply` and `agentjobs
run` against a scripted model API on 127.0.0.1 (tests/scripted_api.py), with HOME a temporary
directory holding its configuration. A CLI release that changes what it prints fails here, not
in a user's night.

What each CLI calls (every request logged by the scripted server), and how it is pointed at it:

- claude 2.1.332 (`@anthropic-ai/claude-code`, a native binary): `POST /v1/messages?beta=true`
  with `stream: true`, one call per turn and nothing else - no count_tokens, no model check.
  ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY; CLAUDE_CODE_OAUTH_TOKEN instead for a subscription
  (`claude setup-token`), whose usage limit comes as 429 with `anthropic-ratelimit-unified-*`
  headers and shows as a `rate_limit_event` with `resetsAt`. DISABLE_AUTOUPDATER=1,
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1. CLAUDE_CODE_MAX_RETRIES=1: it retries a 401
  itself, 10 times by default with backoff (minutes), printing `api_retry` events.
- codex 0.171.0 (`@openai/codex`, a native binary): `GET /v1/responses` with `Upgrade:
  websocket` first (426 makes it fall back at once), then `POST /v1/responses` (`stream: true`,
  SSE). `openai_base_url` in $HOME/.codex/config.toml (it ignores OPENAI_BASE_URL) and
  OPENAI_API_KEY; `check_for_update_on_startup = false` (api.github.com), `[analytics] enabled =
  false` (ab.chatgpt.com) and `[features] plugins = false` (the curated plugins sync: chatgpt.com,
  github.com), else it resolves those hosts on every start. It wants a git workdir. It retries a
  401 five times itself ("Reconnecting... n/5 (unexpected status 401 ...)"), ~7 s.
- gemini 0.61.0 (`@google/gemini-cli`, node): `POST /v1beta/models/gemini-3.5-flash-lite:
  generateContent` first (the `auto` model router's classifier, JSON mode: it wants
  `{complexity_reasoning, complexity_score}`), then `POST /v1beta/models/<model>:
  streamGenerateContent?alt=sse`. GOOGLE_GEMINI_BASE_URL and GEMINI_API_KEY, with
  `security.auth.selectedType: gemini-api-key` and `privacy.usageStatisticsEnabled: false` (else
  it sends usage statistics to play.googleapis.com) in ~/.gemini/settings.json. It exits with the
  HTTP status mod 256 (429 -> 173, 400 -> 144); Google answers a bad key with 400
  API_KEY_INVALID, not 401.

Checked with `strace -f -e trace=connect,sendto`: with this configuration none of the three
connects anywhere but 127.0.0.1 (and no DNS look-up).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import REPO, State, write
from tests.scripted_api import USAGE, ScriptedAPI

REALCLIS = REPO / "tests" / "realclis"
BIN = REALCLIS / "node_modules" / ".bin"
PACKAGES = {
    "claude": "@anthropic-ai/claude-code",
    "codex": "@openai/codex",
    "gemini": "@google/gemini-cli",
}
KINDS = tuple(PACKAGES)
# the developer's own variables that would point a CLI elsewhere, log it in, or (CLAUDECODE)
# make claude refuse to start inside a Claude Code session
_FOREIGN = re.compile(r"^(ANTHROPIC_|CLAUDE|OPENAI_|CODEX_|GEMINI_|GOOGLE_|VERTEX)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _not_installed() -> str | None:
    """Why the pinned CLIs are not usable in tests/realclis/node_modules, or None."""
    pinned = json.loads((REALCLIS / "package.json").read_text())["dependencies"]
    for name, package in PACKAGES.items():
        manifest = REALCLIS / "node_modules" / package / "package.json"
        if not (BIN / name).exists() or not manifest.exists():
            return f"{name} ({package}) is not installed"
        version = json.loads(manifest.read_text())["version"]
        if version != pinned[package]:
            return f"{package} {version} is installed, {pinned[package]} is pinned"
    return None


@pytest.fixture(scope="session")
def real_clis() -> Path:
    """tests/realclis/node_modules/.bin with the pinned CLIs, installed by `npm ci` when they
    are missing. Without npm or the registry the tests skip, except under CI, where they fail."""
    problem = _not_installed()
    if problem is not None:
        command = ["npm", "ci", "--prefix", str(REALCLIS), "--no-audit", "--no-fund"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            problem = f"{problem}, and `npm ci --prefix tests/realclis` could not run: {err}"
        else:
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                problem = (
                    f"{problem}, and `npm ci --prefix tests/realclis` failed "
                    f"(exit {done.returncode}): {' | '.join(tail)}"
                )
            else:
                problem = _not_installed()
    if problem is not None:
        if _in_ci():
            pytest.fail(f"the real agent CLIs are needed under CI: {problem}", pytrace=False)
        pytest.skip(f"the real agent CLIs: {problem}")
    return BIN


@dataclass
class Rig:
    """One test's scripted API, HOME, jobs directory (in a git repository: the workdir) and
    state directory, and `agentjobs` run for real against them."""

    api: ScriptedAPI
    kind: str
    root: Path
    env: dict[str, str]

    @property
    def state(self) -> State:
        return State.files(self.root / "state")

    def agentjobs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "agentjobs", "--jobs-dir", "repo/jobs.d"),
                *("--state-dir", str(self.root / "state"), *args),
            ],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def job(self, silence: str = "30s", prompt: str = "Say done.") -> None:
        """The job `j` and its agent applied: one attempt may be retried twice, 10 minutes on."""
        spec = {
            "agent": {"kind": self.kind, "prompt": prompt},
            "retry": {"attempts": 3, "backoff": {"initial": "10m", "max": "10m", "jitter": "0s"}},
            "timeout": "2m",
            "silence_timeout": silence,
            "kill_grace": "1s",
        }
        write(self.root / "repo" / "jobs.d" / "j.yaml", json.dumps(spec))
        applied = self.agentjobs("apply")
        assert applied.returncode == 0, applied.stderr

    def finished(self) -> list[dict[str, Any]]:
        return self.state.records("attempt_finished")


@pytest.fixture(params=KINDS)
def rig(
    request: pytest.FixtureRequest, real_clis: Path, tmp_path: Path, bytecode_cache: None
) -> Iterator[Rig]:
    kind = str(request.param)
    home = tmp_path / "home"
    home.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)  # codex wants a git workdir
    (tmp_path / "tmp").mkdir()  # what the CLIs leave in TMPDIR (gemini's error reports)
    env = {k: v for k, v in os.environ.items() if not _FOREIGN.match(k)}
    env.update(
        HOME=str(home),
        TMPDIR=str(tmp_path / "tmp"),
        PATH=f"{real_clis}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    with ScriptedAPI() as api:
        env.update(_configure(kind, home, api.url))
        yield Rig(api, kind, tmp_path, env)


def _configure(kind: str, home: Path, url: str) -> dict[str, str]:
    """The CLI's configuration files under `home`, and its environment: our server, a key, and
    nothing that reaches the internet."""
    if kind == "claude":
        return {
            "ANTHROPIC_BASE_URL": url,
            "ANTHROPIC_API_KEY": "sk-ant-api03-scripted",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_MAX_RETRIES": "1",
        }
    if kind == "codex":
        write(
            home / ".codex" / "config.toml",
            f"""
            openai_base_url = "{url}/v1"
            check_for_update_on_startup = false

            [analytics]
            enabled = false

            [features]
            plugins = false
            """,
        )
        return {"OPENAI_API_KEY": "sk-proj-scripted"}
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    }
    write(home / ".gemini" / "settings.json", json.dumps(settings))
    return {"GOOGLE_GEMINI_BASE_URL": url, "GEMINI_API_KEY": "AIza-scripted"}


# -- success: the agent's facts, with usage and cost, in the record ----------------------------


def test_a_successful_turn_records_the_agents_usage(rig: Rig) -> None:
    rig.api.script("ok")
    rig.job()
    run = rig.agentjobs("run", "j")
    assert run.returncode == 0, run.stderr
    assert "Done: nothing needed changing." in run.stdout  # streamed as it ran
    [record] = rig.finished()
    assert (record["outcome"], record["exit_code"], record["error"]) == ("succeeded", 0, None)
    agent = record["agent"]
    assert agent["turns"] == 1  # a real session (issue 15): a session id and a turn
    if rig.kind == "claude":
        assert (agent["subtype"], agent["is_error"], agent["num_turns"]) == ("success", False, 1)
        assert agent["total_cost_usd"] == record["cost_usd"]  # claude prices its own tokens
        assert agent["usage"]["input_tokens"] == USAGE["input"]
        assert agent["usage"]["output_tokens"] == USAGE["output"]
        assert agent["api_retries"] == 0 and agent["session_id"]
    elif rig.kind == "codex":
        assert agent["usage"] == {
            "input_tokens": USAGE["input"],
            "cached_input_tokens": 0,
            "cache_write_input_tokens": 0,
            "output_tokens": USAGE["output"],
            "reasoning_output_tokens": 0,
        }
        assert agent["thread_id"]
    else:
        stats = agent["stats"]
        # two model calls: the router's classifier, then the turn; both counted, per model
        assert (stats["input_tokens"], stats["output_tokens"]) == (
            2 * USAGE["input"],
            2 * USAGE["output"],
        )
        assert sorted(stats["models"]) == ["gemini-3.5-flash-lite", "gemini-3.8-flash"]
        assert agent["model"] == "gemini-2.5-pro"  # `auto` in its init: priced as the default
        assert agent["session_id"]
    # the cost: claude's own figure, else tokens times the price table
    assert record["cost_usd"] > 0
    assert record.get("cost_estimated", False) is (rig.kind != "claude")
    assert rig.api.model_calls(), "the CLI never called the scripted API"


# -- a hollow run: a success without a turn is no_change, retried ------------------------------


@pytest.mark.parametrize("rig", ["claude"], indirect=True)
def test_a_success_without_a_turn_is_a_hollow_run(rig: Rig) -> None:
    # claude answers a prompt that is a local slash command itself: `success` with `num_turns:
    # 0` and no model call. (codex and gemini send such a prompt to the model as it is.)
    rig.job(prompt="/cost")
    run = rig.agentjobs("run", "j")
    assert run.returncode == 1, run.stderr
    [record] = rig.finished()
    assert (record["outcome"], record["exit_code"], record["error"]) == (
        "no_change",
        0,
        "hollow run: claude reported success without a real session (0 turns)",
    )
    assert (record["agent"]["subtype"], record["agent"]["num_turns"]) == ("success", 0)
    assert record["agent"]["session_id"]
    assert rig.api.model_calls() == []
    assert "next attempt at" in run.stderr  # retried by the retry rules, not dead-lettered


# -- a usage limit: held until it lifts, not a failure ---------------------------------------


def test_a_usage_limit_holds_the_agents_limit_and_is_not_dead_lettered(rig: Rig) -> None:
    rig.api.script("usage_limit")
    if rig.kind == "claude":  # a subscription's limit (an OAuth token): it has a reset time
        del rig.env["ANTHROPIC_API_KEY"]
        rig.env["CLAUDE_CODE_OAUTH_TOKEN"] = "sk-ant-oat01-scripted"
    rig.job()
    started = datetime.now(UTC)
    run = rig.agentjobs("run", "j")
    assert run.returncode == 1, run.stderr
    [record] = rig.finished()
    assert record["outcome"] == "rate_limited", record
    assert record["hold"] == rig.kind
    assert rig.state.dead_letters() == []
    held = rig.state.runtime().holds
    assert list(held) == [rig.kind]
    until = datetime.fromisoformat(held[rig.kind])
    if rig.kind == "claude":
        # resetsAt from the rate_limit_event: the scripted reset, an hour on
        assert record["error"].startswith("usage or rate limit: You've hit your 5-hour limit")
        assert started + timedelta(minutes=59) < until < started + timedelta(minutes=62)
    elif rig.kind == "codex":
        # "try again at 9:17 PM", the machine's local time, to the minute
        assert "You\u2019ve hit your usage limit" in run.stdout
        assert record["error"] == "usage or rate limit: hit your usage limit"
        assert started + timedelta(minutes=58) < until < started + timedelta(minutes=62)
    else:
        # the daily quota names no reset time: held until midnight Pacific time, when
        # Google's daily quotas reset (plus up to a minute's spread)
        assert record["exit_code"] == 173
        assert record["error"].startswith(
            "usage or rate limit (HTTP 429): [API Error: You have exhausted your daily quota "
            "on this model.]\nPlease wait and try again later."
        )
        pacific = started.astimezone(ZoneInfo("America/Los_Angeles"))
        midnight = (pacific + timedelta(days=1)).replace(hour=0, minute=0, second=0)
        assert midnight <= until <= midnight + timedelta(minutes=1, seconds=1)
    assert "next attempt at" in run.stderr
    status = rig.agentjobs("status")
    assert f"held: {rig.kind} usage limit until " in status.stdout


# -- a bad key: a retry cannot fix it ----------------------------------------------------------


def test_a_bad_key_is_dead_lettered_after_one_attempt(rig: Rig) -> None:
    rig.api.script("bad_key")
    rig.job()
    run = rig.agentjobs("run", "j")
    assert run.returncode == 1, run.stderr
    assert "dead-lettered" in run.stderr
    [record] = rig.finished()
    assert record["outcome"] == "failed"
    [dead] = rig.state.dead_letters()
    reason = dead["reason"]
    if rig.kind == "claude":
        assert reason == (
            "a retry cannot fix this: authentication failed (API status 401): Invalid API key "
            "\u00b7 Fix external API key"
        )
        assert record["agent"]["api_retries"] == 1  # CLAUDE_CODE_MAX_RETRIES
    elif rig.kind == "codex":
        assert reason == (
            "a retry cannot fix this: authentication failed (401): log the agent CLI in, or set "
            "its API key or token in the job's env_file"
        )
        assert "unexpected status 401 Unauthorized: Incorrect API key provided" in run.stdout
        assert len(rig.api.model_calls()) == 6  # codex's own five reconnects
    else:
        assert record["exit_code"] == 144  # HTTP 400 mod 256
        assert reason == (
            "a retry cannot fix this: the API refused the request (HTTP 400): "
            "[API Error: API key not valid. Please pass a valid API key.]"
        )


# -- a hung API: killed by silence, in seconds -------------------------------------------------


# gemini (node, relaunching itself) prints nothing at all for its first 2-3 s on an idle
# machine, more on a busy one; claude and codex print at once
SILENCE = {"claude": 3, "codex": 3, "gemini": 15}


def test_a_hung_api_is_killed_by_silence(rig: Rig) -> None:
    rig.api.script("hang")
    silence = SILENCE[rig.kind]
    rig.job(silence=f"{silence}s")
    run = rig.agentjobs("run", "j")
    assert run.returncode == 1, run.stderr
    [record] = rig.finished()
    assert record["outcome"] == "silence", record
    assert record["error"] == f"no output for {silence}s"
    assert silence <= record["duration_s"] < silence + 4  # kill_grace 1s
    assert rig.api.model_calls()  # it was waiting on us
    assert "next attempt at" in run.stderr  # silence is retried, not dead-lettered
