"""The fake OpenAI server's application (ASGI): its settings, its log and
its answers and faults. ``fake_openai`` runs it in a process of its own and
says what it does."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal, TypeAlias

import anyio
import msgspec

__all__ = ["App", "FaultKind", "LogEntry", "MODEL_NAME", "SeenRequest", "ServerSettings"]

FaultKind: TypeAlias = Literal["429", "500", "503", "400", "drop", "slow", "malformed", "empty", "context", "cut"]

MODEL_NAME = "fake-echo"


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the server does; replaced as a whole by ``configure``."""

    latency: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[FaultKind, ...] = ("429", "500", "503", "drop")
    script: tuple[FaultKind | Literal["ok"], ...] = ()
    retry_after: float = 0.0
    slow_seconds: float = 30.0
    seed: int = 0
    models: tuple[str, ...] = (MODEL_NAME,)
    chunk_delay: float = 0.0
    reasoning: str = ""
    record_requests: bool = True  # off for benchmarks: keeping every request costs the server CPU


class LogEntry(msgspec.Struct, frozen=True, kw_only=True):
    t: float
    key: str
    outcome: str
    disconnected: bool = False


class SeenRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request as the server received it: what a client really sent."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


Scope: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class App:
    """The ASGI application (plain ASGI: a fault needs the raw send/receive)."""

    def __init__(self) -> None:
        self.settings = ServerSettings()
        self.log: list[LogEntry] = []
        self.rng = random.Random(0)
        self.script: list[str] = []
        self.seen: list[SeenRequest] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body", False):
                break
        path, method = scope["path"], scope["method"]
        if self.settings.record_requests and not path.startswith("/_"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            query = scope.get("query_string", b"").decode("latin-1")
            parsed: Any = json.loads(body) if body and headers.get("content-type", "").startswith("application/json") else None
            self.seen.append(SeenRequest(method=method, path=path, query=query, headers=headers, body=parsed))
        if path == "/_control" and method == "POST":
            self.settings = msgspec.json.decode(body, type=ServerSettings)
            self.rng = random.Random(self.settings.seed)
            self.script = list(self.settings.script)
            self.log = []
            self.seen = []
            await _json(send, 200, {"ok": True})
        elif path == "/_log":
            await _json(send, 200, msgspec.to_builtins(self.log))
        elif path == "/_requests":
            await _json(send, 200, msgspec.to_builtins(self.seen))
        elif path.endswith("/models"):
            models = [{"id": name, "object": "model", "owned_by": "me"} for name in self.settings.models]
            await _json(send, 200, {"object": "list", "data": models})
        elif path.endswith("/chat/completions") and method == "POST":
            await self._chat(json.loads(body), receive, send)
        elif path.endswith("/completions") and method == "POST":
            # A text-completions endpoint that knows nothing of vLLM's
            # return_token_ids: what a non-vLLM server answers a token prompt with.
            request = json.loads(body)
            self.log.append(LogEntry(t=time.monotonic(), key=str(request.get("prompt"))[:40], outcome="ok"))
            await _json(send, 200, {"id": "cmpl-fake", "object": "text_completion", "model": request.get("model", MODEL_NAME),
                                    "choices": [{"index": 0, "text": "echo", "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        else:
            await _json(send, 404, {"error": {"message": f"no route {method} {path}"}})

    def _fault(self) -> str:
        if self.script:
            return self.script.pop(0)
        s = self.settings
        if s.fault_rate > 0 and self.rng.random() < s.fault_rate:
            return self.rng.choice(s.fault_kinds)
        return "ok"

    async def _chat(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        key = next((_text(m.get("content")) for m in reversed(request["messages"]) if m["role"] == "user"), "")
        if _REASONING_MODEL.match(str(request.get("model", ""))) and "max_tokens" in request:
            message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
            error = {"message": message, "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}
            await _json(send, 400, {"error": error})
            return
        fault = self._fault()
        entry_t = time.monotonic()
        if self.settings.latency > 0:
            await anyio.sleep(self.settings.latency)
        if fault == "slow":
            disconnected = await _wait_for_disconnect(receive, self.settings.slow_seconds)
            self.log.append(LogEntry(t=entry_t, key=key, outcome=fault, disconnected=disconnected))
            if disconnected:
                return
            fault = "ok"
        else:
            self.log.append(LogEntry(t=entry_t, key=key, outcome=fault))
        if fault in ("429", "500", "503", "400"):
            headers = [(b"retry-after", str(self.settings.retry_after).encode())] if fault == "429" else []
            await _json(send, int(fault), {"error": {"message": f"injected {fault}", "type": "injected"}}, headers)
        elif fault == "drop":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"id": "cut', "more_body": True})
            raise ConnectionAbortedError("injected drop")  # uvicorn closes the half-sent response
        elif fault == "malformed":
            await _raw(send, 200, b'{"choices": "not a list", "broken', [(b"content-type", b"application/json")])
        elif fault == "empty":
            await _json(send, 200, {**_completion(request, key), "choices": []})
        elif fault == "context":
            message = (
                "This model's maximum context length is 1024 tokens. However, you requested 1100 tokens "
                "(1000 in the messages, 100 in the completion). Please reduce the length of the messages or completion."
            )
            await _json(send, 400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
        elif request.get("stream"):
            await self._stream(request, key, receive, send, cut=fault == "cut")
        else:
            await _json(send, 200, _completion(request, key, self.settings.reasoning))

    async def _stream(self, request: dict[str, Any], key: str, receive: Receive, send: Send, *, cut: bool) -> None:
        """The same answer as server-sent events, one word a chunk,
        ``chunk_delay`` apart; ``cut`` drops the connection after two chunks.
        A client that hangs up mid-stream is logged (``stream-disconnected``)."""
        async with anyio.create_task_group() as tg:
            gone = anyio.Event()

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()

            tg.start_soon(watch)
            try:
                await self._events(request, key, send, cut, gone)
            finally:
                tg.cancel_scope.cancel()

    async def _events(self, request: dict[str, Any], key: str, send: Send, cut: bool, gone: anyio.Event) -> None:
        body = _completion(request, key, self.settings.reasoning)
        headers = [(b"content-type", b"text/event-stream"), (b"x-request-id", f"req-fake-{random.randrange(10**9)}".encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def event(payload: object) -> None:
            await send({"type": "http.response.body", "body": b"data: " + json.dumps(payload).encode() + b"\n\n", "more_body": True})

        sent = 0
        for choice in body["choices"]:
            if choice["message"].get("reasoning_content"):
                await event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"],
                             "choices": [{"index": choice["index"], "delta": {"reasoning_content": choice["message"]["reasoning_content"]}, "finish_reason": None}]})
            words = (choice["message"]["content"] or "").split(" ")
            for k, word in enumerate(words):
                if cut and sent == 2:
                    raise ConnectionAbortedError("injected cut mid-stream")
                delta = {"content": word if k == 0 else " " + word}
                await event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"],
                             "choices": [{"index": choice["index"], "delta": delta, "finish_reason": None}]})
                sent += 1
                if self.settings.chunk_delay > 0:
                    with anyio.move_on_after(self.settings.chunk_delay):
                        await gone.wait()
                if gone.is_set():
                    self.log.append(LogEntry(t=time.monotonic(), key=key, outcome="stream-disconnected", disconnected=True))
                    return
            for call_index, call in enumerate(choice["message"].get("tool_calls") or []):
                delta = {"tool_calls": [{"index": call_index, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}]}
                await event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"],
                             "choices": [{"index": choice["index"], "delta": delta, "finish_reason": None}]})
            await event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}]})
        await event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"], "choices": [], "usage": body["usage"]})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def _text(content: Any) -> str:
    # A message's content: a string, or parts (text, and images shown as a mark).
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) if part.get("type") == "text" else f"[{part.get('type')}]"
            for part in content
            if isinstance(part, dict)
        )
    return str(content or "")


def _example(schema: Any, defs: dict[str, Any], key: str, depth: int = 0) -> Any:
    """A value that fits a JSON schema (the subset msgspec writes)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "$ref" in schema:
        return _example(defs.get(str(schema["$ref"]).rsplit("/", 1)[-1]), defs, key, depth + 1)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return _example(schema[union][0], defs, key, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        return {name: _example(sub, defs, key, depth + 1) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [_example(schema.get("items", {}), defs, key, depth + 1)] * max(1, int(schema.get("minItems", 1)))
    return {"string": key, "integer": len(key.split()), "number": 0.5, "boolean": True}.get(str(kind))


def _answer(request: dict[str, Any], key: str) -> str:
    form = request.get("response_format") or {}
    if form.get("type") == "json_schema":
        schema = form.get("json_schema", {}).get("schema", {})
        return json.dumps(_example(schema, schema.get("$defs", {}), key))
    if form.get("type") == "json_object":
        return json.dumps({"echo": key})
    return f"echo: {key}"


def _completion(request: dict[str, Any], key: str, reasoning: str = "") -> dict[str, Any]:
    text = _answer(request, key)
    words = text.split()
    max_tokens = int(request.get("max_completion_tokens") or request.get("max_tokens") or len(words))
    choice_tool = request.get("tool_choice")
    choices = []
    for index in range(int(request.get("n") or 1)):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            message["reasoning_content"] = reasoning
        finish = "stop"
        if isinstance(choice_tool, dict):
            name = choice_tool["function"]["name"]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{index}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps({"text": key})},
                    }
                ],
            }
            finish = "tool_calls"
        choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": finish}
        if request.get("logprobs"):
            choice["logprobs"] = {
                "content": [{"token": w, "logprob": -0.5, "bytes": list(w.encode()), "top_logprobs": []} for w in words]
            }
        choices.append(choice)
    prompt_tokens = sum(len(_text(m.get("content")).split()) for m in request["messages"])
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", MODEL_NAME),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": min(max_tokens, len(words)) * len(choices),
            "total_tokens": prompt_tokens + min(max_tokens, len(words)) * len(choices),
            "prompt_tokens_details": {"cached_tokens": prompt_tokens // 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }


async def _wait_for_disconnect(receive: Receive, seconds: float) -> bool:
    """Sleep ``seconds`` unless the client hangs up first; say which."""
    with anyio.move_on_after(seconds):
        while True:
            if (await receive())["type"] == "http.disconnect":
                return True
    return False


async def _raw(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode()), (b"x-request-id", f"req-fake-{random.randrange(10**9)}".encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: object, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _raw(send, status, json.dumps(payload).encode(), [(b"content-type", b"application/json"), *(headers or [])])


