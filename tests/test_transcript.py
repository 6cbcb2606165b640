"""`logs --pretty`: each agent's streamed JSON events rendered as short readable lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agentjobs.transcript import Transcript, render
from tests.conftest import write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"


def lines(*events: object) -> str:
    """A log: dicts as JSON event lines, strings as plain text lines."""
    return "".join((json.dumps(e) if isinstance(e, dict) else str(e)) + "\n" for e in events)


SESSION = "3f2a9c40-7b18-4c6d-9e51-8a2b1d4f0c73"

# `claude -p ... --output-format stream-json --verbose`
CLAUDE = lines(
    {
        "type": "system",
        "subtype": "init",
        "cwd": "/src/app",
        "session_id": SESSION,
        "tools": ["Task", "Bash", "Glob", "Grep", "Read", "Edit", "Write"],
        "mcp_servers": [],
        "model": "claude-sonnet-4-5-20250929",
        "permissionMode": "acceptEdits",
        "apiKeySource": "none",
    },
    {
        "type": "assistant",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "The login test fails; look at api.py.",
                    "signature": "x",
                },
                {"type": "text", "text": "I'll run the tests first."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "Bash",
                    "input": {"command": "make test", "description": "Run the tests"},
                },
            ],
            "stop_reason": None,
            "usage": {"input_tokens": 4, "output_tokens": 86},
        },
        "parent_tool_use_id": None,
        "session_id": SESSION,
    },
    {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {
                    "tool_use_id": "toolu_01",
                    "type": "tool_result",
                    "content": "FAILED tests/test_api.py::test_login\n1 failed, 41 passed in 2.31s",
                    "is_error": True,
                }
            ],
        },
        "parent_tool_use_id": None,
        "session_id": SESSION,
    },
    {
        "type": "system",
        "subtype": "api_retry",
        "attempt": 1,
        "max_retries": 10,
        "retry_delay_ms": 600,
        "error_status": 529,
        "error": "overloaded",
    },
    {
        "type": "rate_limit_event",
        "rate_limit_info": {
            "status": "allowed",
            "resetsAt": 1787520600,
            "rateLimitType": "five_hour",
        },
        "session_id": SESSION,
    },
    {
        "type": "assistant",
        "message": {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "Edit",
                    "input": {
                        "file_path": "/src/app/api.py",
                        "old_string": "return None",
                        "new_string": "return user",
                    },
                }
            ],
        },
        "session_id": SESSION,
    },
    {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {
                    "tool_use_id": "toolu_02",
                    "type": "tool_result",
                    "content": [
                        {"type": "text", "text": "The file /src/app/api.py has been updated."}
                    ],
                }
            ],
        },
        "session_id": SESSION,
    },
    {
        "type": "rate_limit_event",
        "rate_limit_info": {
            "status": "rejected",
            "resetsAt": 1787520600,
            "rateLimitType": "five_hour",
        },
    },
    "npm WARN deprecated some-package@1.0.0",
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 84213,
        "duration_api_ms": 71900,
        "num_turns": 7,
        "result": "Fixed the login test.\nAll 42 tests pass.",
        "session_id": SESSION,
        "total_cost_usd": 0.0312,
        "usage": {
            "input_tokens": 120,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 18000,
            "output_tokens": 940,
        },
        "permission_denials": [],
    },
)

# `codex exec PROMPT --json`
CODEX = lines(
    {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"},
    {"type": "turn.started"},
    {
        "type": "item.completed",
        "item": {"id": "item_0", "type": "reasoning", "text": "**Running the tests**"},
    },
    {
        "type": "item.started",
        "item": {
            "id": "item_1",
            "type": "command_execution",
            "command": "bash -lc 'make test'",
            "aggregated_output": "",
            "exit_code": None,
            "status": "in_progress",
        },
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_1",
            "type": "command_execution",
            "command": "bash -lc 'make test'",
            "aggregated_output": "1 failed, 41 passed\n",
            "exit_code": 2,
            "status": "failed",
        },
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_2",
            "type": "file_change",
            "changes": [
                {"path": "src/api.py", "kind": "update"},
                {"path": "tests/t.py", "kind": "add"},
            ],
            "status": "completed",
        },
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_3",
            "type": "command_execution",
            "command": "bash -lc 'make test'",
            "aggregated_output": "42 passed\n",
            "exit_code": 0,
            "status": "completed",
        },
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_4",
            "type": "todo_list",
            "items": [
                {"text": "run tests", "completed": True},
                {"text": "fix login", "completed": False},
            ],
        },
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_5",
            "type": "agent_message",
            "text": "Fixed `login()`; all 42 tests pass.",
        },
    },
    {
        "type": "turn.completed",
        "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122},
    },
    {"type": "error", "message": "Reconnecting... 1/5"},
    {
        "type": "turn.failed",
        "error": {"message": "exceeded retry limit, last status: 429 Too Many Requests"},
    },
)

# `gemini -p PROMPT --output-format stream-json`
GEMINI = lines(
    "Loaded cached credentials.",
    {
        "type": "init",
        "timestamp": "2025-10-10T12:00:00.000Z",
        "session_id": "c25acda3",
        "model": "gemini-2.5-pro",
    },
    {
        "type": "message",
        "timestamp": "2025-10-10T12:00:00.010Z",
        "role": "user",
        "content": "Run the tests — all of them.",
    },
    {
        "type": "message",
        "timestamp": "2025-10-10T12:00:01.000Z",
        "role": "assistant",
        "content": "I'll run ",
        "delta": True,
    },
    {
        "type": "message",
        "timestamp": "2025-10-10T12:00:01.100Z",
        "role": "assistant",
        "content": "the tests.",
        "delta": True,
    },
    {
        "type": "tool_use",
        "timestamp": "2025-10-10T12:00:02.000Z",
        "tool_name": "run_shell_command",
        "tool_id": "run_shell_command-1",
        "parameters": {"command": "make test", "description": "Run tests"},
    },
    {
        "type": "tool_result",
        "timestamp": "2025-10-10T12:00:05.000Z",
        "tool_id": "run_shell_command-1",
        "status": "success",
        "output": "42 passed",
    },
    {
        "type": "tool_use",
        "timestamp": "2025-10-10T12:00:06.000Z",
        "tool_name": "read_file",
        "tool_id": "read_file-2",
        "parameters": {"absolute_path": "/src/app/missing.py"},
    },
    {
        "type": "tool_result",
        "timestamp": "2025-10-10T12:00:06.100Z",
        "tool_id": "read_file-2",
        "status": "error",
        "error": {"type": "file_not_found", "message": "File not found: /src/app/missing.py"},
    },
    {
        "type": "error",
        "timestamp": "2025-10-10T12:00:07.000Z",
        "severity": "warning",
        "message": "Loop detected",
    },
    {
        "type": "message",
        "timestamp": "2025-10-10T12:00:08.000Z",
        "role": "assistant",
        "content": "All tests pass.",
        "delta": True,
    },
    {
        "type": "result",
        "timestamp": "2025-10-10T12:00:09.000Z",
        "status": "success",
        "stats": {
            "total_tokens": 12500,
            "input_tokens": 12000,
            "output_tokens": 500,
            "cached": 8000,
            "input": 4000,
            "duration_ms": 9000,
            "tool_calls": 2,
        },
    },
)


def test_claude_code_stream_json() -> None:
    assert render(CLAUDE) == [
        f"init: model claude-sonnet-4-5-20250929, session {SESSION}, 7 tools, permission mode acceptEdits",
        "thinking: The login test fails; look at api.py.",
        "assistant: I'll run the tests first.",
        "tool Bash: make test",
        "tool Bash error: FAILED tests/test_api.py::test_login",
        "  1 failed, 41 passed in 2.31s",
        "API retry 1/10: overloaded, HTTP 529; next try in 600ms",
        'tool Edit: {"file_path":"/src/app/api.py","old_string":"return None","new_string":"return user"}',
        "tool Edit result: The file /src/app/api.py has been updated.",
        "RATE LIMITED: five_hour limit reached; resets 2026-08-23 21:30 UTC",
        "npm WARN deprecated some-package@1.0.0",
        "result: success (1m24s, 7 turns, $0.0312, 20120 in (18000 cached) / 940 out tokens)",
        "  Fixed the login test.",
        "  All 42 tests pass.",
    ]


def test_claude_code_failed_results() -> None:
    assert render(
        lines(
            {
                "type": "result",
                "subtype": "error_max_turns",
                "is_error": True,
                "duration_ms": 600000,
                "num_turns": 30,
                "total_cost_usd": 1.5,
                "permission_denials": [
                    {
                        "tool_name": "Bash",
                        "tool_use_id": "t1",
                        "tool_input": {"command": "rm -rf build"},
                    },
                    {"tool_name": "WebFetch", "tool_use_id": "t2", "tool_input": {}},
                ],
            },
            {
                "type": "result",
                "subtype": "success",
                "is_error": True,
                "result": "Invalid API key · Please run /login",
            },
            {
                "type": "rate_limit_event",
                "rate_limit_info": {"status": "allowed_warning", "rateLimitType": "seven_day"},
            },
            {"type": "system", "subtype": "api_retry"},
        )
    ) == [
        "result: error_max_turns (10m, 30 turns, $1.5000)",
        "  permission denied: Bash, WebFetch",
        "result: error",
        "  Invalid API key · Please run /login",
        "rate limit allowed_warning: seven_day limit",
        "API retry",
    ]


def test_codex_exec_json() -> None:
    assert render(CODEX) == [
        "init: thread 0199a213-81c0-7800-8aa1-bbab2a035a53",
        "thinking: **Running the tests**",
        "tool shell: bash -lc 'make test'",
        "tool shell error (exit 2): 1 failed, 41 passed",
        "file change: update src/api.py, add tests/t.py",
        "tool shell: bash -lc 'make test'",
        "tool shell result (exit 0): 42 passed",
        "todo: [x] run tests",
        "  [ ] fix login",
        "assistant: Fixed `login()`; all 42 tests pass.",
        "turn completed: 24763 in (24448 cached) / 122 out tokens",
        "error: Reconnecting... 1/5",
        "turn failed: exceeded retry limit, last status: 429 Too Many Requests",
    ]


def test_gemini_stream_json_joins_message_chunks() -> None:
    assert render(GEMINI) == [
        "Loaded cached credentials.",
        "init: model gemini-2.5-pro, session c25acda3",
        "user: Run the tests — all of them.",
        "assistant: I'll run the tests.",
        "tool run_shell_command: make test",
        "tool run_shell_command result: 42 passed",
        'tool read_file: {"absolute_path":"/src/app/missing.py"}',
        "tool read_file error: File not found: /src/app/missing.py",
        "warning: Loop detected",
        "assistant: All tests pass.",
        "result: success (9s, 2 tool calls, 12000 in (8000 cached) / 500 out tokens)",
    ]


def test_plain_text_unknown_events_and_long_outputs() -> None:
    long_output = "x" * 350
    text = (
        lines(
            "plain text stays as it is",
            "",
            "[1, 2, 3]",
            '{"not json',
            {"type": "future_event", "data": {"a": 1}},
            {"no_type": True},
            {"type": "stream_event", "event": {"type": "content_block_delta"}},
            {
                "type": "user",
                "message": {
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t9", "content": long_output}
                    ]
                },
            },
            {
                "type": "user",
                "message": {
                    "content": [{"type": "tool_result", "tool_use_id": "t9", "content": ""}]
                },
            },
        )
        + "\n[agentjobs] no output for 900s; sent SIGTERM to the process group\n"
    )
    assert render(text) == [
        "plain text stays as it is",
        "",
        "[1, 2, 3]",
        '{"not json',
        '{"type":"future_event","data":{"a":1}}',
        '{"no_type":true}',
        f"tool result: {'x' * 300}... [50 more chars]",
        "tool result: (no output)",
        "",
        "[agentjobs] no output for 900s; sent SIGTERM to the process group",
    ]


def test_fed_in_pieces_it_renders_whole_lines_only() -> None:
    transcript = Transcript()
    data = GEMINI.encode()
    out: list[str] = []
    for start in range(0, len(data), 7):  # cuts lines (and UTF-8 sequences) anywhere
        out += transcript.feed(data[start : start + 7])
    assert out + transcript.finish() == render(GEMINI)
    unterminated = Transcript()
    assert unterminated.feed(b'{"type":"turn.failed","error":{"message":"boom"}}') == []
    assert unterminated.finish() == ["turn failed: boom"]


def test_colour_only_when_asked() -> None:
    coloured = render(CODEX, color=True)
    assert any("\x1b[" in line for line in coloured)
    assert not any("\x1b[" in line for line in render(CODEX))


def test_logs_pretty_renders_a_run_and_follow_renders_the_same(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    events = [
        json.dumps({"type": "thread.started", "thread_id": "t-1"}),
        "a plain line",
        json.dumps(
            {
                "type": "item.completed",
                "item": {"id": "i", "type": "agent_message", "text": "Done."},
            }
        ),
    ]
    actions = [word for event in events for word in ("print", event)]
    write(jobs_dir / "agent.yaml", json.dumps({"command": [sys.executable, FAKE, *actions]}))
    aj = ("--jobs-dir", J, "--state-dir", str(state_dir))
    assert cli(*aj, "apply").code == 0
    assert cli(*aj, "run", "agent").code == 0
    run_id = json.loads(cli(*aj, "-o", "json", "history").out)[0]["run_id"]
    expected = "init: thread t-1\na plain line\nassistant: Done.\n"
    assert cli(*aj, "logs", run_id, "--pretty").out == expected
    assert cli(*aj, "logs", run_id, "--pretty", "--follow").out == expected
    assert cli(*aj, "logs", run_id).out == "\n".join(events) + "\n"
