#!/usr/bin/env python3
"""A stand-in for the `claude` CLI that edits files, for the review-inbox tests.

It appends {"argv", "cwd"} to $FAKE_EDITOR_DIR/calls.jsonl, then follows the next plan in
$FAKE_EDITOR_DIR/plans.json (the last plan repeats), in its working directory:
    {"write": {"path": "content", ...}, "commit": "message" | null}
then prints what `claude -p --output-format stream-json --verbose` prints for a one-turn
session that succeeded: a system init event, an assistant message, a result event with
session_id and num_turns. A plan with no "write" changes nothing (a hollow run).
"""

import json
import os
import subprocess
import sys

folder = os.environ["FAKE_EDITOR_DIR"]
calls = os.path.join(folder, "calls.jsonl")
with open(calls, "a") as handle:
    handle.write(json.dumps({"argv": sys.argv, "cwd": os.getcwd()}) + "\n")
with open(calls) as handle:
    number = sum(1 for _ in handle)
with open(os.path.join(folder, "plans.json")) as handle:
    plans = json.load(handle)
plan = plans[min(number, len(plans)) - 1]

for path, content in plan.get("write", {}).items():
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        handle.write(content)
if plan.get("commit"):
    identity = ["-c", "user.name=Fake Agent", "-c", "user.email=agent@example.com"]
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", *identity, "commit", "-q", "-m", plan["commit"]], check=True)

session = f"sess-edit-{number}"
said = f"I changed {', '.join(plan.get('write', {})) or 'nothing'}."
for event in (
    {"type": "system", "subtype": "init", "session_id": session, "model": "claude-sonnet-4-5"},
    {
        "type": "assistant",
        "session_id": session,
        "message": {"role": "assistant", "content": [{"type": "text", "text": said}]},
    },
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 1,
        "session_id": session,
        "result": said,
        "total_cost_usd": 0.0125,
        "usage": {"input_tokens": 100, "output_tokens": 20},
    },
):
    print(json.dumps(event), flush=True)
