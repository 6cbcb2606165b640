#!/usr/bin/env python3
"""A stand-in for the `claude` CLI (and, by its file name, codex/gemini/aider) for tests.

It appends its argv to $FAKE_AGENT_DIR/calls.jsonl and behaves as the next mode in
$FAKE_AGENT_DIR/modes.json says (the last mode repeats):
    ok            stream-json: init, assistant text, a successful result event
    is_error      a result event with is_error true, exit code 0
    no_result     init and assistant text, no result event, exit 0
    usage_limit   a rejected rate_limit_event (resetsAt = $FAKE_RESET_AT) and an error result
    auth          an error result with api_error_status 401, exit 1
    api_retry     two api_retry system events, then a successful result
    cost=X        a successful result that cost X USD (total_cost_usd)
    tool_wait     an assistant message (id, usage) calling Bash(make test), then nothing until
                  $FAKE_AGENT_DIR/release exists (30 s at most); then the tool's result and a
                  successful result event
    hollow        a successful result of 0 turns costing nothing, exit 0: how claude 2.1.332
                  ends a prompt that is a local slash command (`/cost`), with no model call
    no_session    init and a successful result without a session id, exit 0
Invoked as `codex` (the file name), it prints codex exec --json shapes instead:
    ok | tokens=IN,CACHED,OUT   thread.started, an agent message, turn.completed with that usage
    hang_after=IN,CACHED,OUT    the same turn.completed, then it keeps running (a minute)
    usage_limit   codex's usage-limit error ("You've hit your usage limit ... try again at ...")
    hollow        thread.started and turn.started, no turn.completed, exit 0
    no_session    a completed turn without thread.started, exit 0
Invoked as `gemini`, it prints gemini --output-format stream-json shapes (0.61):
    ok            init (session_id), the user's message, the model's reply, a successful result
    hollow        the same without the model's reply (0 turns)
    no_session    the same as ok with an init event that has no session id
"""

import json
import os
import sys

folder = os.environ["FAKE_AGENT_DIR"]
calls_path = os.path.join(folder, "calls.jsonl")
with open(calls_path, "a") as handle:
    handle.write(
        json.dumps(
            {
                "argv": sys.argv,
                "cwd": os.getcwd(),
                "trust": os.environ.get("GEMINI_CLI_TRUST_WORKSPACE"),
            }
        )
        + "\n"
    )
with open(calls_path) as handle:
    number = sum(1 for _ in handle)
with open(os.path.join(folder, "modes.json")) as handle:
    modes = json.load(handle)
mode = modes[min(number, len(modes)) - 1]
session = f"sess-{number}"


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


if os.path.basename(sys.argv[0]) == "codex":
    import time

    if mode != "no_session":
        emit({"type": "thread.started", "thread_id": f"thread-{number}"})
    if mode == "usage_limit":
        emit(
            {
                "type": "error",
                "message": "You\u2019ve hit your usage limit. Upgrade to Pro "
                "(https://chatgpt.com/explore/pro), visit https://chatgpt.com/codex/settings/usage "
                "to purchase more credits or try again at 2:44 PM.",
            }
        )
        emit({"type": "turn.failed", "error": {"message": "usage limit"}})
        sys.exit(1)
    emit({"type": "turn.started"})
    if mode == "hollow":
        sys.exit(0)
    emit({"type": "item.completed", "item": {"type": "agent_message", "text": f"did {mode}"}})
    numbers = mode.partition("=")[2] or "1000,0,100"
    given, cached, out = (int(n) for n in numbers.split(","))
    usage = {"input_tokens": given, "cached_input_tokens": cached, "output_tokens": out}
    emit({"type": "turn.completed", "usage": usage})
    if mode.startswith("hang_after"):
        time.sleep(60)
    sys.exit(0)

if os.path.basename(sys.argv[0]) == "gemini":
    stamp = "2026-11-23T12:00:00.000Z"
    init = {"type": "init", "timestamp": stamp, "session_id": session, "model": "auto"}
    if mode == "no_session":
        del init["session_id"]
    emit(init)
    emit({"type": "message", "timestamp": stamp, "role": "user", "content": "the prompt"})
    called = mode != "hollow"  # a hollow run: no model call, no reply
    if called:
        reply = {"role": "assistant", "content": f"did {mode}", "delta": True}
        emit({"type": "message", "timestamp": stamp, **reply})
    given, out = (120, 12) if called else (0, 0)
    counts = {"total_tokens": given + out, "input_tokens": given, "output_tokens": out}
    counts |= {"cached": 0, "input": given}
    models = {"gemini-3.8-flash": counts} if called else {}
    stats = {**counts, "duration_ms": 80, "tool_calls": 0, "models": models}
    emit({"type": "result", "timestamp": stamp, "status": "success", "stats": stats})
    sys.exit(0)

init = {"type": "system", "subtype": "init", "session_id": session, "model": "fake"}
if mode == "no_session":
    del init["session_id"]
emit(init)
emit({"type": "assistant", "message": {"content": [{"type": "text", "text": f"working ({mode})"}]}})
result = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "result": "done",
    "session_id": session,
    "num_turns": 3,
    "total_cost_usd": 0.25,
    "duration_ms": 1200,
    "usage": {"input_tokens": 10, "output_tokens": 20},
}
if mode == "ok":
    emit(result)
elif mode == "tool_wait":
    import time

    call = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "make test"}}
    usage = {"input_tokens": 1000, "cache_read_input_tokens": 0, "output_tokens": 500}
    message = {"id": "msg_1", "role": "assistant", "content": [call], "usage": usage}
    emit({"type": "assistant", "message": message})
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
    emit({"type": "user", "message": {"role": "user", "content": [answer]}})
    emit(result)
elif mode.startswith("cost="):
    emit({**result, "total_cost_usd": float(mode.partition("=")[2])})
elif mode == "api_retry":
    emit({"type": "system", "subtype": "api_retry", "attempt": 1, "error": "overloaded"})
    emit({"type": "system", "subtype": "api_retry", "attempt": 2, "error": "overloaded"})
    emit(result)
elif mode == "hollow":
    emit({**result, "num_turns": 0, "total_cost_usd": 0, "usage": {}, "result": ""})
elif mode == "no_session":
    emit({key: value for key, value in result.items() if key != "session_id"})
elif mode == "is_error":
    emit({**result, "is_error": True, "result": "I could not make the tests pass"})
elif mode == "no_result":
    pass
elif mode == "usage_limit":
    reset = int(os.environ["FAKE_RESET_AT"])
    emit({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed", "resetsAt": reset}})
    emit({"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": reset}})
    emit({**result, "is_error": True, "result": f"Claude AI usage limit reached|{reset}"})
elif mode == "auth":
    emit(
        {
            **result,
            "is_error": True,
            "api_error_status": 401,
            "result": "Invalid API key · Please run /login",
        }
    )
    sys.exit(1)
