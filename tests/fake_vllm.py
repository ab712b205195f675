"""A small real HTTP server that answers like vLLM's OpenAI-compatible API and records every request.

It follows vLLM's documented API (``vllm serve --enable-lora``): ``GET /v1/models`` lists the base
model (``parent: null``, ``max_model_len``) and each LoRA adapter (``root``: its path, ``parent``: the
base model), ``POST /v1/chat/completions`` and ``/v1/completions`` answer or stream server-sent
events ending in ``data: [DONE]``, ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` answers
``Success: LoRA adapter '<name>' added successfully.`` in plain text, and
``/v1/unload_lora_adapter`` likewise; errors are vLLM's ``{"object": "error", "message", "type",
"param", "code"}`` with its statuses (404 for an unknown model or LoRA, 400 for a LoRA loaded twice).

Every answer is ``"<model> says: <last user message>"`` (whole words, streamed one word a piece), so
tests can see which model answered. ``script`` queues failures (status, body, headers) answered
before the next requests; ``mounts`` maps the paths vLLM would see to folders on this machine (the
container's volumes: nothing else exists for it), so a LoRA path is checked the way vLLM checks it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def vllm_error(message: str, type_: str, status: int) -> JSONResponse:
    return JSONResponse({"object": "error", "message": message, "type": type_, "param": None, "code": status},
                        status_code=status)


class FakeVLLM:
    """The recorded requests are ``{"method", "path", "body", "authorization"}`` dicts, in arrival order."""

    def __init__(self, loras: dict[str, str] | None = None, base_model: str = BASE_MODEL, api_key: str | None = None,
                 max_model_len: int = 2048, owned_by: str = "vllm", mounts: dict[str, str] | None = None,
                 answer: str | None = None):
        self.base_model = base_model
        self.loras = dict(loras or {})
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.owned_by = owned_by
        self.mounts = dict(mounts or {})
        self.fixed_answer = answer
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, Any, dict[str, str]]] = []
        self.stream_error_after: int | None = None  # words streamed before an error event
        self.delay = 0.0
        self.word_delay = 0.0  # seconds between streamed words
        self.abandoned = 0  # streams whose client went away before the end
        self.in_flight = self.max_in_flight = 0  # generation requests being answered at once (non-streamed)
        self._lock = threading.Lock()

    # -- behaviour --------------------------------------------------------------------------------------
    def answer(self, model: str, body: dict[str, Any]) -> str:
        if self.fixed_answer is not None:
            return self.fixed_answer
        if "messages" in body:
            user = [m["content"] for m in body["messages"] if m.get("role") == "user"]
            last = user[-1] if user else ""
        else:
            last = body.get("prompt", "")
        return f"{model} says: {last}"

    def _visible(self, path: str) -> bool:
        """Like vLLM in a container: only paths under its mounts exist for it."""
        for remote, local in self.mounts.items():
            if path == remote or path.startswith(remote.rstrip("/") + "/"):
                return (Path(local) / path[len(remote):].lstrip("/") / "adapter_config.json").is_file()
        return False

    async def _prelude(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        with self._lock:
            self.requests.append({"method": request.method, "path": request.url.path, "body": body,
                                  "authorization": request.headers.get("authorization")})
            scripted = self.script.pop(0) if self.script else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if scripted is not None:
            status, payload, headers = scripted
            if isinstance(payload, str):
                return body, Response(payload, status_code=status, headers=headers)
            return body, JSONResponse(payload, status_code=status, headers=headers)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return body, JSONResponse({"error": "Unauthorized"}, status_code=401)  # vLLM's --api-key answer
        return body, None

    # -- routes ---------------------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        _, early = await self._prelude(request)
        if early is not None:
            return early
        created = int(time.time())
        data = [{"id": self.base_model, "object": "model", "created": created, "owned_by": self.owned_by,
                 "root": self.base_model, "parent": None, "max_model_len": self.max_model_len, "permission": []}]
        data += [{"id": name, "object": "model", "created": created, "owned_by": self.owned_by, "root": path,
                  "parent": self.base_model, "max_model_len": None, "permission": []}
                 for name, path in self.loras.items()]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, chat: bool) -> Response:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, chat)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, request: Request, chat: bool) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        model = body.get("model")
        # adaptrix serve composes a weighted mix sent in the "adapter" field (its extension of the OpenAI body)
        mixed = self.owned_by == "adaptrix" and isinstance(body.get("adapter"), dict)
        if not mixed and model != self.base_model and model not in self.loras:
            return vllm_error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        text = self.answer(model, body)
        usage = {"prompt_tokens": 7, "completion_tokens": len(text.split()), "total_tokens": 7 + len(text.split())}
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": "stop"} if chat else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"})
            return JSONResponse({"id": "cmpl-fake", "object": kind, "created": int(time.time()), "model": model,
                                 "choices": [choice], "usage": usage})
        return StreamingResponse(self._events(model, text, chat), media_type="text/event-stream")

    async def _events(self, model: str, text: str, chat: bool):
        def chunk(piece: str | None, finish: str | None = None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                kind = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
                kind = "text_completion"
            return "data: " + json.dumps({"id": "cmpl-fake", "object": kind, "created": 0, "model": model,
                                          "choices": [choice]}) + "\n\n"

        finished = False
        try:
            if chat:
                yield chunk(None, first=True)
            for index, word in enumerate(text.split(" ")):
                if self.stream_error_after is not None and index >= self.stream_error_after:
                    error = {"object": "error", "message": "The engine died.", "type": "InternalServerError",
                             "param": None, "code": 500}
                    yield "data: " + json.dumps(error) + "\n\n"
                    break
                if self.word_delay:
                    await asyncio.sleep(self.word_delay)
                yield chunk(word if index == 0 else " " + word)
            else:
                yield chunk(None, "stop")
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # vLLM aborts the request when its client disconnects
                self.abandoned += 1

    async def load_lora(self, request: Request) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return vllm_error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400)
        if name in self.loras:
            return vllm_error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400)
        if not self._visible(path):
            return vllm_error(f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404)
        self.loras[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.", status_code=200)

    async def unload_lora(self, request: Request) -> Response:
        body, early = await self._prelude(request)
        if early is not None:
            return early
        name = body.get("lora_name")
        if name not in self.loras:
            return vllm_error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        del self.loras[name]
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/load_lora_adapter", self.load_lora, methods=["POST"]),
            Route("/v1/unload_lora_adapter", self.unload_lora, methods=["POST"]),
        ])

    def calls(self) -> list[tuple[str, str, Any]]:
        """(method, path, JSON body) of every request so far."""
        return [(r["method"], r["path"], r["body"]) for r in self.requests]


class ServerThread:
    """Run an ASGI app with uvicorn on 127.0.0.1, on a free port, in a daemon thread (a context manager)."""

    def __init__(self, app: Any):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
