"""A scripted model API on 127.0.0.1 for the real agent CLIs (tests/test_real_clis.py).

One threaded HTTP server speaks the three wire protocols the CLIs use - Anthropic Messages
(`POST /v1/messages`, streamed as SSE), OpenAI Responses (`POST /v1/responses`, SSE; a
WebSocket upgrade is refused with 426 so codex falls back to HTTP at once) and Gemini
(`POST /v1beta/models/M:streamGenerateContent?alt=sse`, `:generateContent`, `:countTokens`) -
and answers every model call with the next scripted behaviour:

- `ok`: one plain-text answer with token usage;
- `usage_limit`: HTTP 429 in the provider's real usage-limit shape (the one each CLI gives up
  on at once instead of retrying: Claude's unified limit headers saying `rejected`, OpenAI's
  `usage_limit_reached`, Gemini's per-day QuotaFailure);
- `bad_key`: the provider's real answer to an invalid key (401; Gemini answers 400
  API_KEY_INVALID);
- `hang`: the request is read and nothing is ever sent back, until the server closes.

The last behaviour of a script repeats, so a CLI's own retries see the same thing. Every request
is kept in `requests` (method, path, the headers named in `KEPT_HEADERS`, JSON body) for tests
and for finding out what a new CLI release calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

BEHAVIOURS = ("ok", "usage_limit", "bad_key", "hang")
ANSWER = "Done: nothing needed changing."
USAGE = {"input": 120, "output": 12}  # tokens every `ok` answer reports
KEPT_HEADERS = ("user-agent", "upgrade", "x-api-key", "authorization", "x-goog-api-key")
RESET_IN = 3600  # seconds until a scripted usage limit lifts


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    behaviour: str | None  # what a model call was answered with; None for anything else


@dataclass
class ScriptedAPI:
    """The server: `with ScriptedAPI() as api: api.script("ok"); ... api.url ...`."""

    requests: list[Request] = field(default_factory=list)
    _script: list[str] = field(default_factory=lambda: ["ok"])
    _lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)  # set: hung calls end
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> ScriptedAPI:
        api = self

        class Handler(_Handler):
            server_api = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *behaviours: str) -> None:
        """Answer the next model calls with these, in order; the last one repeats."""
        unknown = set(behaviours) - set(BEHAVIOURS)
        assert behaviours and not unknown, f"behaviours are {BEHAVIOURS}, not {unknown}"
        with self._lock:
            self._script = list(behaviours)

    def model_calls(self) -> list[Request]:
        return [r for r in self.requests if r.behaviour is not None]

    def next_behaviour(self) -> str:
        with self._lock:
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    server_api: ScriptedAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # kept in `requests` instead

    def do_GET(self) -> None:
        if self.headers.get("upgrade", "").lower() == "websocket":
            # codex tries a WebSocket first; 426 makes it use HTTP streaming at once
            self._record(None)
            self._json(426, {"error": {"message": "Upgrade Required", "type": "invalid_request"}})
            return
        self._route("GET")

    def do_HEAD(self) -> None:
        self._record(None)
        self._reply(200, b"", "text/plain")

    def do_POST(self) -> None:
        self._route("POST")

    # -- routing ----------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        if method == "POST" and path == "/v1/messages/count_tokens":
            self._record(body)
            self._json(200, {"input_tokens": USAGE["input"]})
        elif method == "POST" and path == "/v1/messages":
            self._model_call(body, _anthropic)
        elif method == "POST" and path == "/v1/responses":
            self._model_call(body, _openai)
        elif method == "POST" and ":countTokens" in path:
            self._record(body)
            self._json(200, {"totalTokens": USAGE["input"]})
        elif method == "POST" and (":streamGenerateContent" in path or ":generateContent" in path):
            self._model_call(body, _gemini)
        else:
            self._record(body)
            self._json(404, {"error": {"message": f"no such endpoint: {method} {path}"}})

    def _model_call(self, body: Any, provider: Any) -> None:
        behaviour = self.server_api.next_behaviour()
        self._record(body, behaviour)
        if behaviour == "hang":
            self.server_api.closing.wait()
            self.close_connection = True
            return
        provider(self, behaviour, body if isinstance(body, dict) else {})

    # -- output -----------------------------------------------------------------------------

    def _record(self, body: Any, behaviour: str | None = None) -> None:
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() in KEPT_HEADERS}
        self.server_api.record(Request(self.command, self.path, headers, body, behaviour))

    def _reply(
        self, status: int, data: bytes, kind: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{time.monotonic_ns()}")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, value: Any, extra: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(value).encode(), "application/json", extra)

    def _sse(self, events: Iterator[tuple[str | None, Any]]) -> None:
        chunks = []
        for name, data in events:
            head = f"event: {name}\n" if name else ""
            chunks.append(f"{head}data: {json.dumps(data)}\n\n")
        self._reply(200, "".join(chunks).encode(), "text/event-stream")


# -- Anthropic Messages API (https://docs.anthropic.com/en/api/messages-streaming) ----------


def _anthropic(handler: _Handler, behaviour: str, body: dict[str, Any]) -> None:
    model = str(body.get("model") or "claude-sonnet-4-5")
    if behaviour == "bad_key":
        handler._json(
            401,
            {
                "type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"},
            },
        )
        return
    if behaviour == "usage_limit":
        reset = int(time.time()) + RESET_IN
        handler._json(
            429,
            {
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "Rate limited"},
            },
            {
                # a subscription's usage limit, as claude.ai accounts get it
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(reset),
                "anthropic-ratelimit-unified-representative-claim": "five_hour",
                "anthropic-ratelimit-unified-5h-status": "rejected",
                "anthropic-ratelimit-unified-5h-reset": str(reset),
                "anthropic-ratelimit-unified-5h-utilization": "1.0",
                "retry-after": str(RESET_IN),
            },
        )
        return
    if not body.get("stream"):
        handler._json(200, _anthropic_message(model, [{"type": "text", "text": ANSWER}]))
        return
    start = _anthropic_message(model, [])
    start["stop_reason"] = None
    start["usage"]["output_tokens"] = 1

    def events() -> Iterator[tuple[str | None, Any]]:
        yield "message_start", {"type": "message_start", "message": start}
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": ANSWER},
            },
        )
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": USAGE["output"]},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    handler._sse(events())


def _anthropic_message(model: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"msg_{time.monotonic_ns()}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": USAGE["input"],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": USAGE["output"],
        },
    }


# -- OpenAI Responses API (https://platform.openai.com/docs/api-reference/responses-streaming) --


def _openai(handler: _Handler, behaviour: str, body: dict[str, Any]) -> None:
    model = str(body.get("model") or "gpt-5")
    if behaviour == "bad_key":
        handler._json(
            401,
            {
                "error": {
                    "message": "Incorrect API key provided: sk-bad. You can find your API key "
                    "at https://platform.openai.com/account/api-keys.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        )
        return
    if behaviour == "usage_limit":
        handler._json(
            429,
            {
                "error": {
                    "type": "usage_limit_reached",
                    "message": "The usage limit has been reached",
                    "plan_type": "plus",
                    "resets_at": int(time.time()) + RESET_IN,
                    "resets_in_seconds": RESET_IN,
                }
            },
        )
        return
    rid = f"resp_{time.monotonic_ns()}"
    item = {
        "id": f"msg_{time.monotonic_ns()}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
    }
    usage = {
        "input_tokens": USAGE["input"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": USAGE["output"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": USAGE["input"] + USAGE["output"],
    }
    response = {"id": rid, "object": "response", "model": model, "status": "in_progress"}

    def events() -> Iterator[tuple[str | None, Any]]:
        yield "response.created", {"type": "response.created", "response": response}
        yield (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "content": []},
            },
        )
        yield (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "delta": ANSWER,
            },
        )
        yield (
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": 0, "item": item},
        )
        done = {**response, "status": "completed", "output": [item], "usage": usage}
        yield "response.completed", {"type": "response.completed", "response": done}

    handler._sse(events())


# -- Gemini API (https://ai.google.dev/api/generate-content) ----------------------------------


def _gemini(handler: _Handler, behaviour: str, body: dict[str, Any]) -> None:
    path = urlsplit(handler.path).path
    model = path.rsplit("/", 1)[-1].split(":", 1)[0]
    if behaviour == "bad_key":
        # Google answers a bad key with 400, not 401
        handler._json(
            400,
            {
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
            },
        )
        return
    if behaviour == "usage_limit":
        metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
        handler._json(
            429,
            {
                "error": {
                    "code": 429,
                    "message": "You exceeded your current quota. * Quota exceeded for metric: "
                    f"{metric}, limit: 250, model: {model}",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [
                                {
                                    "quotaMetric": metric,
                                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                    "quotaDimensions": {"location": "global", "model": model},
                                    "quotaValue": "250",
                                }
                            ],
                        },
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "50s"},
                    ],
                }
            },
        )
        return
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    # a JSON-mode call (the model router's classifier, the next-speaker check) gets an object
    # of its schema; a turn gets the plain answer
    text = json.dumps(_example(schema)) if isinstance(schema, dict) else ANSWER
    chunk = {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": USAGE["input"],
            "candidatesTokenCount": USAGE["output"],
            "totalTokenCount": USAGE["input"] + USAGE["output"],
        },
        "modelVersion": model,
        "responseId": f"r{time.monotonic_ns()}",
    }
    if ":streamGenerateContent" in path:
        handler._sse(iter([(None, chunk)]))
    else:
        handler._json(200, chunk)


def _example(schema: dict[str, Any]) -> Any:
    """The smallest value of a (Gemini, OpenAPI-style) JSON schema: the first enum value, 1,
    False, a short string; objects with their required properties."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or list(properties)
        return {name: _example(properties.get(name) or {}) for name in required}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return False
    return "simple"
