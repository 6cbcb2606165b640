"""Agent presets end to end, with a fake `claude` executable on PATH (tests/fake_claude.py)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentjobs.agents import JUDGED_BYTES, build_argv, corrective_section, reset_from_text
from agentjobs.pricing import meter_output, price_table
from agentjobs.spec import AgentSpec
from tests.conftest import State, write

J = "repo/jobs.d"
T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Put fake agent CLIs on PATH; returns (set_modes, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    source = Path(__file__).with_name("fake_claude.py").read_text()
    for name in ("claude", "codex", "gemini", "aider"):
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\n{source}")
        exe.chmod(0o755)
    data = tmp_path / "fake-agent"
    data.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AGENT_DIR", str(data))
    monkeypatch.setenv("FAKE_RESET_AT", str(int((T0 + timedelta(hours=1)).timestamp())))

    def set_modes(*modes: str) -> None:
        (data / "modes.json").write_text(json.dumps(list(modes)))

    def calls() -> list[list[str]]:
        path = data / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["argv"][1:] for line in path.read_text().splitlines()]

    return set_modes, calls


def finished(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((state_dir / "records").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in out if r["event"] == "attempt_finished"]


def test_exact_argv_per_preset() -> None:
    claude = AgentSpec(
        kind="claude",
        prompt="p",
        model="opus",
        max_turns=5,
        allowed_tools=("Read", "Bash(make test)"),
        disallowed_tools=("WebFetch",),
        append_system_prompt="be brief",
        max_budget_usd=2.5,
        extra_args=("--debug",),
    )
    assert build_argv(claude, "fix it", "sess-1") == [
        "claude",
        "-p",
        "fix it",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
        "--resume",
        "sess-1",
        "--model",
        "opus",
        "--max-turns",
        "5",
        "--allowedTools",
        "Read,Bash(make test)",
        "--disallowedTools",
        "WebFetch",
        "--append-system-prompt",
        "be brief",
        "--max-budget-usd",
        "2.5",
        "--debug",
    ]
    bypass = AgentSpec(kind="claude", prompt="p", permission_mode="bypassPermissions")
    assert build_argv(bypass, "x")[6:8] == ["--permission-mode", "bypassPermissions"]
    assert build_argv(AgentSpec(kind="codex", prompt="p"), "fix it") == [
        "codex",
        "exec",
        "fix it",
        "--json",
        "--sandbox",
        "workspace-write",
    ]
    assert build_argv(
        AgentSpec(kind="codex", prompt="p", sandbox="read-only", model="o4"), "x"
    ) == ["codex", "exec", "x", "--json", "--sandbox", "read-only", "--model", "o4"]
    assert build_argv(AgentSpec(kind="gemini", prompt="p"), "fix it") == [
        "gemini",
        "-p",
        "fix it",
        "--output-format",
        "stream-json",
        "--approval-mode",
        "auto_edit",
    ]
    assert build_argv(AgentSpec(kind="aider", prompt="p"), "fix it") == [
        "aider",
        "--message",
        "fix it",
        "--yes-always",
        "--no-auto-commits",
    ]
    assert build_argv(AgentSpec(kind="aider", prompt="p", allow_commits=True), "x") == [
        "aider",
        "--message",
        "x",
        "--yes-always",
    ]
    assert build_argv(
        AgentSpec(kind="custom", prompt="p", command=("my-agent", "--json")), "fix it"
    ) == ["my-agent", "--json", "fix it"]


def test_is_error_with_exit_0_is_a_failure_and_agent_facts_are_recorded(
    aj, fake, jobs_dir: Path, state_dir: Path
) -> None:
    set_modes, calls = fake
    set_modes("is_error")
    write(
        jobs_dir / "fix.yaml",
        "agent: {kind: claude, prompt: Fix the tests.}\nretry: {attempts: 1}\n",
    )
    assert aj("apply").code == 0
    result = aj("run", "fix")
    assert result.code == 1
    record = finished(state_dir)[0]
    assert (record["outcome"], record["exit_code"]) == ("failed", 0)
    assert record["error"] == "claude reported an error: I could not make the tests pass"
    assert record["agent"] == {
        "api_retries": 0,
        "session_id": "sess-1",
        "num_turns": 3,
        "total_cost_usd": 0.25,
        "duration_ms": 1200,
        "usage": {"input_tokens": 10, "output_tokens": 20},
        "subtype": "success",
        "is_error": True,
        # added by agentjobs: the agent, its account, tokens and cost (claude's own figure)
        "kind": "claude",
        "model": "fake",  # from the init event
        "limit_key": "claude",
        "tokens": {"input": 10, "cached": 0, "output": 20},
        "turns": 3,
        "cost_usd": 0.25,
        "cost_estimated": False,
    }
    assert (record["cost_usd"], "cost_estimated" in record) == (0.25, False)
    assert calls()[0][:3] == ["-p", "Fix the tests.", "--output-format"]


def test_no_result_event_is_a_failure(aj, fake, jobs_dir: Path, state_dir: Path) -> None:
    fake[0]("no_result")
    write(jobs_dir / "a.yaml", "agent: {kind: claude, prompt: x}\nretry: {attempts: 1}\n")
    assert aj("apply").code == 0
    assert aj("run", "a").code == 1
    assert finished(state_dir)[0]["error"] == "claude ended without a result event"


def test_api_retries_are_counted_not_mistaken_for_failure(
    aj, fake, jobs_dir: Path, state_dir: Path
) -> None:
    fake[0]("api_retry")
    write(jobs_dir / "a.yaml", "agent: {kind: claude, prompt: x}\n")
    assert aj("apply").code == 0
    assert aj("run", "a").code == 0
    assert finished(state_dir)[0]["agent"]["api_retries"] == 2


@pytest.mark.parametrize("resume", [False, True])
def test_corrective_retry_feeds_the_failure_back(
    aj, fake, jobs_dir: Path, state_dir: Path, resume: bool
) -> None:
    set_modes, calls = fake
    set_modes("is_error", "ok")
    write(
        jobs_dir / "fix.yaml",
        json.dumps(
            {
                "agent": {"kind": "claude", "prompt": "Fix the tests."},
                "retry": {
                    "attempts": 2,
                    "resume": resume,
                    "backoff": {"initial": "1s", "max": "1s", "jitter": "0s"},
                },
            }
        ),
    )
    assert aj("apply").code == 0
    assert aj("run", "fix").code == 1
    import time

    time.sleep(1.1)
    assert aj("tick").code == 0
    second = calls()[1]
    prompt = second[1]
    assert prompt.startswith(
        "Fix the tests.\n\n---\nA previous attempt at this task (attempt 1) "
        "did not succeed: failed (claude reported an error: I "
        "could not make the tests pass)."
    )
    assert '"text": "working (is_error)"' in prompt  # its output, bounded to 8 KiB
    assert ("--resume" in second) == resume
    if resume:
        assert second[second.index("--resume") + 1] == "sess-1"
    records = finished(state_dir)
    assert [(r["attempt"], r["trigger"], r["corrective"], r["outcome"]) for r in records] == [
        (1, "manual", False, "failed"),
        (2, "retry", True, "succeeded"),
    ]


def test_usage_limit_holds_the_shared_limit_until_the_reset(
    ajs, fake, jobs_dir: Path, state: State
) -> None:
    # on both backends: the hold is part of the state (runtime.json, or the holds table)
    set_modes, calls = fake
    set_modes("usage_limit", "ok")
    write(
        jobs_dir / "a.yaml",
        "agent: {kind: claude, prompt: a}\nschedule: {every: 1d}\n"
        "lock: a\nretry: {attempts: 1}\npriority: high\n",
    )
    write(
        jobs_dir / "b.yaml",
        "agent: {kind: claude, prompt: b}\nschedule: {every: 1d}\nlock: b\nretry: {attempts: 1}\n",
    )
    assert ajs("apply", "--now", T0.isoformat()).code == 0
    first = ajs("tick", "--now", T0.isoformat(), "--max-concurrent", "1")
    assert first.code == 1
    assert [r["outcome"] for r in state.records("attempt_finished")] == ["rate_limited"]
    assert len(calls()) == 1  # b was held, not run into the same limit
    reset = T0 + timedelta(hours=1)
    record = state.records("attempt_finished")[0]
    assert record["hold"] == "claude"
    assert list(state.runtime().holds) == ["claude"]
    assert (
        reset.isoformat()
        <= record["next_attempt_at"]
        <= (reset + timedelta(seconds=60)).isoformat()
    )
    status = ajs("status", "--now", (T0 + timedelta(minutes=30)).isoformat()).out
    assert "held: claude usage limit until " in status
    assert ajs("tick", "--now", (T0 + timedelta(minutes=30)).isoformat()).out == ""
    later = ajs("tick", "--now", (reset + timedelta(minutes=2)).isoformat())
    assert later.code == 0, later.err
    assert state.runtime().holds == {}  # lifted
    outcomes = [(r["job"], r["attempt"], r["outcome"]) for r in state.records("attempt_finished")]
    assert sorted(outcomes) == [
        ("a", 1, "rate_limited"),
        ("a", 2, "succeeded"),
        ("b", 1, "succeeded"),
    ]
    # the rate-limited attempt did not use up a's single attempt


def test_authentication_failure_is_permanent(aj, fake, jobs_dir: Path, state_dir: Path) -> None:
    fake[0]("auth")
    write(jobs_dir / "a.yaml", "agent: {kind: claude, prompt: x}\nretry: {attempts: 5}\n")
    assert aj("apply").code == 0
    result = aj("run", "a")
    assert result.code == 1
    assert "dead-lettered" in result.err
    dead = json.loads(aj("-o", "json", "dlq", "list").out)[0]
    assert dead["reason"].startswith(
        "a retry cannot fix this: authentication failed (API status 401)"
    )


def test_a_missing_agent_cli_is_permanent_and_says_where_to_look(
    aj, jobs_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    write(
        jobs_dir / "a.yaml",
        f"agent: {{kind: claude, prompt: x}}\nretry: {{attempts: 5}}\nenv: {{PATH: {empty}}}\n",
    )
    assert aj("apply").code == 0
    result = aj("run", "a")
    assert result.code == 1
    error = (
        "cannot start 'claude': No such file or directory; check the PATH the job runs with "
        "(set PATH in its `env` or the crontab) or run `agentjobs doctor`"
    )
    [record] = finished(state_dir)  # one attempt: a retry would not find it either
    assert (record["outcome"], record["error"]) == ("failed", error)
    dead = json.loads(aj("-o", "json", "dlq", "list").out)[0]
    assert dead["reason"] == f"a retry cannot fix this: {error}"


def test_a_claude_error_result_says_what_the_result_says() -> None:
    def result(**fields: Any) -> str:
        return json.dumps({"type": "result", "is_error": True, **fields})

    said = _judge("claude", result(subtype="success", result="I gave up"), 0)
    assert (said.outcome, said.error) == ("failed", "claude reported an error: I gave up")
    said = _judge("claude", result(subtype="success"), 0)
    assert said.error == "claude reported an error"
    said = _judge("claude", result(subtype="error_max_turns", is_error=False), 1)
    assert said.error == "claude reported an error (error_max_turns)"
    said = _judge("claude", result(subtype="error_during_execution", result="tool crashed"), 1)
    assert said.error == "claude reported an error (error_during_execution): tool crashed"


def test_reset_times_in_text() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert reset_from_text("Claude AI usage limit reached|1795442400", now) == datetime(
        2026, 11, 23, 12, 0, tzinfo=UTC
    ) + (datetime.fromtimestamp(1795442400, UTC) - now)
    # 4pm in Warsaw (UTC+1 in November) is 15:00 UTC
    assert reset_from_text("You've hit your limit · resets 4pm (Europe/Warsaw)", now) == datetime(
        2026, 11, 23, 15, 0, tzinfo=UTC
    )
    # already past today: tomorrow
    assert reset_from_text("resets 9am (Europe/Warsaw)", now) == datetime(
        2026, 11, 24, 8, 0, tzinfo=UTC
    )
    assert reset_from_text("API Error: Rate limit reached", now) is None


def test_corrective_section_is_bounded_and_templated() -> None:
    text = corrective_section(None, 1, "timeout", "timed out after 60s", "x" * 20000)
    assert len(text.encode()) < 8192 + 400
    custom = corrective_section(
        "Attempt {attempt} ended {outcome}{error}: {output}", 2, "failed", None, "boom"
    )
    assert custom == "Attempt 2 ended failed: boom"


def _judge(  # type: ignore[no-untyped-def]
    kind: str, text: str, exit_code: int | None, now: datetime = T0, **agent: Any
):
    from agentjobs.agents import preset

    spec = AgentSpec(kind=kind, prompt="p", **agent)
    return preset(kind).judge(text, exit_code, spec, now)


def test_codex_gemini_aider_and_custom_verdicts() -> None:
    codex_ok = "\n".join(
        json.dumps(e)
        for e in [
            {"type": "thread.started", "thread_id": "th-1"},
            {"type": "turn.completed", "usage": {"input_tokens": 5}},
        ]
    )
    verdict = _judge("codex", codex_ok, 0)
    assert (verdict.outcome, verdict.facts) == (
        "succeeded",
        {"thread_id": "th-1", "usage": {"input_tokens": 5}},
    )
    failed = json.dumps(
        {"type": "turn.failed", "error": {"message": "stream error: 429 Too Many Requests"}}
    )
    assert _judge("codex", failed, 1).outcome == "rate_limited"
    unauthorized = json.dumps({"type": "error", "message": "401 Unauthorized"})
    verdict = _judge("codex", unauthorized, 1)
    assert (verdict.outcome, verdict.permanent) == ("failed", True)
    assert _judge("gemini", "", 42).permanent is True
    assert _judge("gemini", "", 53).error == "the turn limit was reached (exit 53)"
    tool = _judge("gemini", "", 54)  # FATAL_TOOL_EXECUTION_ERROR: retried, not permanent
    assert (tool.outcome, tool.permanent, tool.error) == (
        "failed",
        False,
        "a tool failed fatally (exit 54)",
    )
    gemini_ok = _lines(
        {"type": "init", "session_id": "s-1", "model": "auto"},
        {"type": "message", "role": "user", "content": "p"},
        {"type": "message", "role": "assistant", "content": "done", "delta": True},
        {"type": "result", "status": "success", "stats": _GEMINI_STATS},
    )
    assert _judge("gemini", gemini_ok, 0).outcome == "succeeded"
    assert _judge("aider", "litellm.RateLimitError: quota exceeded", 1).outcome == "rate_limited"
    assert _judge("aider", "done", 0).outcome == "succeeded"
    stream = json.dumps({"type": "result", "is_error": True, "result": "gave up"})
    assert _judge("custom", stream, 0, command=("x",), output="stream-json").outcome == "failed"
    assert _judge("custom", "plain", 0, command=("x",)).outcome is None  # the exit code decides
    extra = _judge("claude", "org quota hit\n", 1, rate_limit_patterns=("quota hit",))
    assert extra.outcome == "rate_limited"


# -- what the real Codex and Gemini CLIs print (issue 12, part 1): the shapes, byte for byte ----


def _lines(*events: dict[str, Any]) -> str:
    return "\n".join(json.dumps(e) for e in events) + "\n"


def test_codex_usage_limit_is_a_usage_limit_with_its_reset_in_local_time() -> None:
    local = datetime(2026, 11, 23, 12, 0).astimezone()  # the machine's zone: codex prints no zone
    message = (
        "You\u2019ve hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing), "
        "visit https://chatgpt.com/codex/settings/usage to purchase more credits or try again "
        "at 2:44 PM."
    )
    out = _lines(
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    )
    verdict = _judge("codex", out, 1, local)
    assert verdict.outcome == "rate_limited" and not verdict.permanent
    assert verdict.reset_at == local.replace(hour=14, minute=44)
    dated = message.replace("at 2:44 PM.", "at Sep 29th, 2027 12:55 AM.")
    verdict = _judge("codex", _lines({"type": "error", "message": dated}), 1, local)
    assert verdict.reset_at == datetime(2027, 9, 29, 0, 55).astimezone()


def test_codex_recovering_by_itself_is_not_a_failure() -> None:
    out = _lines(
        {"type": "thread.started", "thread_id": "th-9"},
        {
            "type": "error",
            "message": "Reconnecting... 1/5 (stream disconnected before completion: "
            "error sending request for url (http://127.0.0.1:9/v1/responses))",
        },
        {"type": "error", "message": "Reconnecting... 2/5 (429 Too Many Requests)"},
        {"type": "turn.completed", "usage": {"input_tokens": 9, "output_tokens": 3}},
    )
    verdict = _judge("codex", out, 0)
    assert verdict.outcome == "succeeded" and verdict.error is None


def test_codex_billing_and_a_non_git_workdir_are_permanent_with_the_clis_message() -> None:
    billing = _lines(
        {
            "type": "turn.failed",
            "error": {
                "message": json.dumps(
                    {
                        "error": {
                            "type": "insufficient_quota",
                            "code": "insufficient_quota",
                            "message": "Quota exceeded. Check your plan and billing details.",
                        }
                    }
                )
            },
        }
    )
    verdict = _judge("codex", billing, 1)
    assert (verdict.outcome, verdict.permanent) == ("failed", True)
    assert verdict.error is not None and "Check your plan and billing details" in verdict.error
    assert "{" not in verdict.error  # the CLI's message, not a JSON fragment
    no_git = "Not inside a trusted directory and --skip-git-repo-check was not specified.\n"
    verdict = _judge("codex", no_git, 1)
    assert (verdict.outcome, verdict.permanent) == ("failed", True)
    assert verdict.error is not None and "--skip-git-repo-check" in verdict.error


def test_gemini_quota_exit_statuses_and_untrusted_workdirs() -> None:
    quota = (
        "[API Error: You have exhausted your daily quota on this model.]\n"
        "Please wait and try again later. To increase your limits, request a quota increase "
        "through AI Studio, or switch to another /auth method\n"
    )
    assert _judge("gemini", quota, 173).outcome == "rate_limited"  # HTTP 429 mod 256
    # no reset time is printed: a daily quota resets at midnight Pacific time
    assert _judge("gemini", quota, 173).reset_at == datetime(2026, 11, 24, 8, tzinfo=UTC)
    assert _judge("gemini", "[API Error: something]", 173).outcome == "rate_limited"
    unauthorized = _judge("gemini", "[API Error: API key not valid]", 145)  # 401
    assert (unauthorized.outcome, unauthorized.permanent) == ("failed", True)
    bad = _judge("gemini", "[API Error: Request contains an invalid argument.]", 144)  # 400
    assert (bad.outcome, bad.permanent) == ("failed", True)
    untrusted = "Gemini CLI is not running in a trusted directory. To proceed, ...\n"
    verdict = _judge("gemini", untrusted, 55)
    assert (verdict.outcome, verdict.permanent) == ("failed", True)
    assert verdict.error is not None and "trusted directory" in verdict.error


def test_gemini_attempts_run_with_the_workspace_trusted(
    aj, fake, jobs_dir: Path, state_dir: Path
) -> None:
    from agentjobs.agents import agent_env

    fake[0]("ok")
    write(jobs_dir / "g.yaml", "agent: {kind: gemini, prompt: x}\n")
    assert aj("apply").code == 0
    assert aj("run", "g").code == 0
    calls = Path(os.environ["FAKE_AGENT_DIR"], "calls.jsonl").read_text().splitlines()
    assert [json.loads(line)["trust"] for line in calls] == ["true"]

    assert agent_env(AgentSpec(kind="gemini", prompt="p")) == {"GEMINI_CLI_TRUST_WORKSPACE": "true"}
    assert agent_env(AgentSpec(kind="codex", prompt="p")) == {}


# -- what the real CLIs print against tests/scripted_api.py (tests/test_real_clis.py) ---------

_GEMINI_STATS = {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0, "cached": 0}


def test_gemini_api_errors_record_the_apis_message_not_its_json_body() -> None:
    # gemini 0.61, a bad key (Google answers 400 API_KEY_INVALID) and a 401: exit 144 and 145,
    # with the API's JSON body inside `[API Error: ...]`
    def result(body: dict[str, Any]) -> str:
        return _lines(
            {"type": "init", "session_id": "s-1", "model": "auto"},
            {
                "type": "result",
                "status": "error",
                "error": {"type": "unknown", "message": f"[API Error: {json.dumps(body)}]"},
                "stats": _GEMINI_STATS,
            },
        )

    bad_key = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        }
    }
    verdict = _judge("gemini", result(bad_key), 144)
    assert (verdict.outcome, verdict.permanent, verdict.error) == (
        "failed",
        True,
        "the API refused the request (HTTP 400): "
        "[API Error: API key not valid. Please pass a valid API key.]",
    )
    unauthenticated = {
        "error": {
            "code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED",
        }
    }
    verdict = _judge("gemini", result(unauthenticated), 145)
    assert (verdict.permanent, verdict.error) == (
        True,
        "authentication failed (HTTP 401): set GEMINI_API_KEY or log the CLI in: "
        "[API Error: Request had invalid authentication credentials.]",
    )


def test_gemini_auto_model_is_priced_as_the_default_model() -> None:
    # gemini 0.61's init names its router (`auto`), not a model; its result counts the router's
    # classifier call and the turn
    from agentjobs.pricing import meter_output, price_table

    out = _lines(
        {"type": "init", "session_id": "s-1", "model": "auto"},
        {
            "type": "result",
            "status": "success",
            "stats": {
                "total_tokens": 264,
                "input_tokens": 240,
                "output_tokens": 24,
                "cached": 0,
                "input": 240,
                "duration_ms": 99,
                "tool_calls": 0,
                "models": {
                    "gemini-3.5-flash-lite": {"total_tokens": 132, "input_tokens": 120},
                    "gemini-3.8-flash": {"total_tokens": 132, "input_tokens": 120},
                },
            },
        },
    )
    facts = meter_output("gemini", None, out).facts(price_table(None))
    assert facts["model"] == "gemini-2.5-pro"
    assert facts["tokens"] == {"input": 240, "cached": 0, "output": 24}
    assert facts["cost_usd"] > 0 and facts["cost_estimated"] is True


# -- hollow runs (issue 15): a success needs a real session, a session id and a turn -----------


def _hollow(kind: str, why: str) -> str:
    return f"hollow run: {kind} reported success without a real session ({why})"


def test_a_claude_success_needs_a_session_id_and_a_turn() -> None:
    init = {"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"}
    result = {"type": "result", "subtype": "success", "is_error": False, "result": "done"}
    real = _lines(init, {**result, "session_id": "s-1", "num_turns": 1})
    verdict = _judge("claude", real, 0)
    assert (verdict.outcome, verdict.error) == ("succeeded", None)
    # 2.1.332 with a prompt that is a local slash command (`/cost`): success, 0 turns, no call
    local = _lines(init, {**result, "session_id": "s-1", "num_turns": 0, "total_cost_usd": 0})
    verdict = _judge("claude", local, 0)
    assert (verdict.outcome, verdict.error, verdict.permanent) == (
        "no_change",
        _hollow("claude", "0 turns"),
        False,
    )
    assert verdict.facts["num_turns"] == 0
    nameless = _lines({**init, "session_id": None}, {**result, "num_turns": 2})
    verdict = _judge("claude", nameless, 0)
    assert (verdict.outcome, verdict.error) == ("no_change", _hollow("claude", "no session id"))
    # the session id in either event is enough; a result that does not count its turns is not
    # judged by them
    assert _judge("claude", _lines(init, {**result, "num_turns": 1}), 0).outcome == "succeeded"
    assert _judge("claude", _lines(init, result), 0).outcome == "succeeded"
    # a failure stays the failure it is; a success with a bad exit code is left to the exit code
    failed = _lines(init, {**result, "is_error": True, "num_turns": 0, "session_id": "s-1"})
    assert _judge("claude", failed, 0).outcome == "failed"
    assert _judge("claude", local, 1).outcome is None


def test_a_codex_success_needs_a_thread_and_a_completed_turn() -> None:
    thread = {"type": "thread.started", "thread_id": "th-1"}
    done = {"type": "turn.completed", "usage": {"input_tokens": 5}}
    started = {"type": "turn.started"}
    assert _judge("codex", _lines(thread, started, done), 0).outcome == "succeeded"
    verdict = _judge("codex", _lines(thread, started), 0)
    assert (verdict.outcome, verdict.error) == ("no_change", _hollow("codex", "0 turns"))
    assert verdict.facts == {"thread_id": "th-1"}
    verdict = _judge("codex", _lines(done), 0)
    assert (verdict.outcome, verdict.error) == ("no_change", _hollow("codex", "no session id"))
    assert _judge("codex", "", 0).outcome == "no_change"  # printed nothing at all


def test_a_gemini_success_needs_a_session_id_and_a_reply() -> None:
    init = {"type": "init", "session_id": "s-1", "model": "auto"}
    user = {"type": "message", "role": "user", "content": "Fix it."}
    result = {"type": "result", "status": "success", "stats": _GEMINI_STATS}

    def reply(text: str) -> dict[str, Any]:
        return {"type": "message", "role": "assistant", "content": text, "delta": True}

    # 0.61 with tools: a turn per model reply, its deltas and tool calls up to the tool results
    tool = {"type": "tool_use", "tool_name": "read_file", "tool_id": "t-1", "parameters": {}}
    answer = {"type": "tool_result", "tool_id": "t-1", "status": "success", "output": ""}
    worked = _lines(init, user, reply("Let me "), reply("look."), tool, answer, reply("Done."))
    worked += _lines(result)
    verdict = _judge("gemini", worked, 0)
    assert (verdict.outcome, verdict.facts["session_id"]) == ("succeeded", "s-1")
    assert meter_output("gemini", None, worked).facts(price_table(None))["turns"] == 2
    empty = _lines(init, user, result)
    verdict = _judge("gemini", empty, 0)
    assert (verdict.outcome, verdict.error) == ("no_change", _hollow("gemini", "0 turns"))
    assert meter_output("gemini", None, empty).facts(price_table(None))["turns"] == 0
    verdict = _judge("gemini", _lines(user, reply("Done."), result), 0)
    assert (verdict.outcome, verdict.error) == ("no_change", _hollow("gemini", "no session id"))
    # an error is the error, not a hollow run
    errored = _lines(init, user, {**result, "status": "error"})
    assert _judge("gemini", errored, 1).outcome == "failed"


def test_a_long_runs_tail_without_its_session_id_is_not_hollow() -> None:
    # a judge sees the last 256 KiB of the log: a longer run's first event, with codex's thread
    # id or gemini's session id, is out of view; its absence there proves nothing
    def tail(*events: dict[str, Any]) -> str:
        text = _lines(*events).encode()
        assert len(text) > JUDGED_BYTES
        return text[-JUDGED_BYTES:].decode(errors="replace")

    big = "x" * 4096
    command = {"type": "command_execution", "command": "cat log", "aggregated_output": big}
    items = [{"type": "item.completed", "item": {**command, "id": f"i{n}"}} for n in range(80)]
    codex = tail(
        {"type": "thread.started", "thread_id": "th-1"},
        {"type": "turn.started"},
        *items,
        {"type": "turn.completed", "usage": {"input_tokens": 5}},
    )
    assert "thread.started" not in codex
    assert _judge("codex", codex, 0).outcome == "succeeded"
    read = {"type": "tool_use", "tool_name": "read_file", "tool_id": "t", "parameters": {}}
    answer = {"type": "tool_result", "tool_id": "t", "status": "success", "output": big * 80}
    gemini = tail(
        {"type": "init", "session_id": "s-1", "model": "auto"},
        {"type": "message", "role": "user", "content": "Fix it."},
        read,
        answer,
        {"type": "message", "role": "assistant", "content": "Done.", "delta": True},
        {"type": "result", "status": "success", "stats": _GEMINI_STATS},
    )
    assert '"init"' not in gemini
    assert _judge("gemini", gemini, 0).outcome == "succeeded"


def test_a_long_line_is_judged_in_no_time() -> None:
    # one 256 KiB line (a file a tool read): the CLI's message patterns try once per line, not
    # once per character (which took a judge a minute)
    import time

    line = json.dumps({"type": "tool_result", "output": "x" * JUDGED_BYTES})[:JUDGED_BYTES]
    started = time.monotonic()
    assert _judge("gemini", line, 1).outcome is None
    assert _judge("codex", line, 1).outcome is None
    assert time.monotonic() - started < 2


def test_agents_without_sessions_are_not_judged_hollow() -> None:
    assert _judge("aider", "Applied edit to app.py\n", 0).outcome == "succeeded"
    stream = json.dumps({"type": "result", "is_error": False, "result": "done"})
    assert _judge("custom", stream, 0, command=("x",), output="stream-json").outcome is None
    assert _judge("custom", "", 0, command=("x",)).outcome is None


@pytest.mark.parametrize(
    ("kind", "mode", "why"),
    [
        ("claude", "hollow", "0 turns"),
        ("claude", "no_session", "no session id"),
        ("codex", "hollow", "0 turns"),
        ("gemini", "hollow", "0 turns"),
    ],
)
def test_a_hollow_run_ends_no_change_and_is_retried_by_the_retry_rules(
    aj, fake, jobs_dir: Path, state_dir: Path, kind: str, mode: str, why: str
) -> None:
    set_modes, calls = fake
    set_modes(mode, "ok")
    backoff = {"initial": "1m", "max": "1m", "jitter": "0s"}
    job = {
        "agent": {"kind": kind, "prompt": "Fix it."},
        "retry": {"attempts": 2, "backoff": backoff},
    }
    write(jobs_dir / "a.yaml", json.dumps(job))
    assert aj("apply").code == 0
    run = aj("run", "a")
    assert run.code == 1  # counted as a failure
    assert "next attempt at" in run.err
    soon = datetime.now(UTC) + timedelta(seconds=30)
    assert aj("tick", "--now", soon.isoformat()).code == 0
    assert len(calls()) == 1  # not before its backoff
    [record] = finished(state_dir)
    assert (record["outcome"], record["exit_code"], record["error"]) == (
        "no_change",
        0,
        _hollow(kind, why),
    )
    later = datetime.now(UTC) + timedelta(minutes=2)
    assert aj("tick", "--now", later.isoformat()).code == 0
    records = finished(state_dir)
    assert [(r["attempt"], r["trigger"], r["outcome"]) for r in records] == [
        (1, "manual", "no_change"),
        (2, "retry", "succeeded"),
    ]
    assert len(calls()) == 2
    if kind == "gemini":  # its turns are counted by agentjobs: 0 then 1
        assert [r["agent"]["turns"] for r in records] == [0, 1]


def test_a_run_that_stays_hollow_uses_up_its_attempts_and_is_dead_lettered(
    aj, fake, jobs_dir: Path, state_dir: Path
) -> None:
    fake[0]("hollow")
    write(jobs_dir / "a.yaml", "agent: {kind: claude, prompt: x}\nretry: {attempts: 1}\n")
    assert aj("apply").code == 0
    result = aj("run", "a")
    assert result.code == 1
    assert "dead-lettered" in result.err
    [dead] = json.loads(aj("-o", "json", "dlq", "list").out)
    assert dead["reason"] == "1 of 1 attempts used"
    assert [r["outcome"] for r in finished(state_dir)] == ["no_change"]
