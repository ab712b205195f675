"""OpenAI-compatible endpoints: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, and vLLM's
``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``.

``model`` selects what runs: the base model id, an adapter of the store, or ``auto`` (routed).
Every answer carries an extra top-level ``adaptrix`` object (adapters and weights, the routing
decision, RAG sources); in a stream it rides on the chunk that carries ``finish_reason``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from adaptrix_core.server.common import (
    ClientGone,
    adapter_for_model,
    adaptrix_block,
    await_result,
    ready_state,
    submit,
)
from adaptrix_core.server.errors import HTTPError, error_body, to_http_error
from adaptrix_core.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    LoraAdapterRequest,
)

router = APIRouter(prefix="/v1")


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """The base model, every adapter in the store, and ``auto``."""
    state = ready_state(request)
    base = state.base_model_ids()[0]
    created = int(state.started_at)
    names = await run_in_threadpool(state.engine.adapter_manager.names)
    data = [{"id": base, "object": "model", "created": created, "owned_by": "adaptrix", "root": base, "parent": None}]
    data += [{"id": name, "object": "model", "created": created, "owned_by": "adaptrix", "root": base, "parent": base}
             for name in names]
    data.append({"id": "auto", "object": "model", "created": created, "owned_by": "adaptrix", "root": base,
                 "parent": base})
    return {"object": "list", "data": data}


def _refuse_unsupported(body: Any) -> None:
    problems = body.unsupported()
    if problems:
        param, message = problems[0]
        raise HTTPError(400, message, code="unsupported_parameter", param=param)


def _gen(body: Any, max_tokens: int | None) -> dict[str, Any]:
    gen = {name: getattr(body, name) for name in ("temperature", "top_p", "seed", "stop", "ignore_eos")
           if getattr(body, name) is not None}
    if max_tokens is not None:
        gen["max_new_tokens"] = max_tokens
    return gen


def _message_text(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI message as {role, content}: text parts joined, 'developer' read as 'system'."""
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise HTTPError(400, f"messages[{index}]: only text content parts are supported.",
                                code="invalid_prompt", param=f"messages[{index}].content")
            texts.append(part["text"])
        content = "".join(texts)
    role = message.get("role")
    return {"role": "system" if role == "developer" else role, "content": content}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion (or a stream of chunks) from the model, adapter or router named by ``model``."""
    state = ready_state(request)
    _refuse_unsupported(body)
    adapter = body.adapter if body.adapter is not None else adapter_for_model(state, body.model)
    messages = [_message_text(i, m) for i, m in enumerate(body.messages)]
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    handle = await submit(state, messages=messages, use_rag=body.use_rag, top_k=body.rag_top_k, adapter=adapter,
                          **_gen(body, max_tokens))
    reply = _Reply(state, handle, body, "chat.completion", "chatcmpl", "/v1/chat/completions")
    return await reply.respond(request)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Text completion of ``prompt`` (answered like ``engine.query``: in the chat template when the model has one)."""
    state = ready_state(request)
    _refuse_unsupported(body)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise HTTPError(400, f"prompt must be one string (or a list of one), got a list of {len(prompt)}; "
                            "send one request per prompt.", code="invalid_prompt", param="prompt")
        prompt = prompt[0]
    adapter = body.adapter if body.adapter is not None else adapter_for_model(state, body.model)
    handle = await submit(state, prompt=prompt, use_rag=body.use_rag, top_k=body.rag_top_k, adapter=adapter,
                          **_gen(body, body.max_tokens))
    reply = _Reply(state, handle, body, "text_completion", "cmpl", "/v1/completions")
    return await reply.respond(request)


class _Reply:
    """Builds the JSON answer or the SSE stream of one completion request."""

    def __init__(self, state: Any, handle: Any, body: Any, kind: str, prefix: str, endpoint: str):
        self.state, self.handle, self.body, self.kind, self.endpoint = state, handle, body, kind, endpoint
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.chat = kind == "chat.completion"

    def _usage(self, result: Any) -> dict[str, int]:
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens}

    async def respond(self, request: Request) -> Response:
        if self.body.stream:
            return StreamingResponse(self._events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            result = await await_result(self.handle, request, self.state, self.endpoint)
        except ClientGone:
            return Response(status_code=499)
        self.state.metrics.observe_result(self.endpoint, result, self.handle.ttft_ms)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                      "logprobs": None, "finish_reason": result.finish_reason}
        else:
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        return JSONResponse({"id": self.id, "object": self.kind, "created": self.created, "model": self.body.model,
                             "system_fingerprint": None, "choices": [choice], "usage": self._usage(result),
                             "adaptrix": adaptrix_block(result)})

    def _chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {"id": self.id, "object": f"{self.kind}.chunk" if self.chat else self.kind, "created": self.created,
                "model": self.body.model, "system_fingerprint": None, "choices": [choice]}

    async def _events(self) -> AsyncIterator[str]:
        finished = False
        try:
            if self.chat:
                yield _sse(self._chunk(None, first=True))
            async for piece in self.handle.astream():
                if piece:
                    yield _sse(self._chunk(piece))
            result = await self.handle.aresult()
            finished = True
            self.state.metrics.observe_result(self.endpoint, result, self.handle.ttft_ms)
            last = self._chunk(None, result.finish_reason)
            last["adaptrix"] = adaptrix_block(result)
            yield _sse(last)
            if (self.body.stream_options or {}).get("include_usage"):
                yield _sse({**self._chunk(None), "choices": [], "usage": self._usage(result)})
        except Exception as exc:  # noqa: BLE001 - the status line is sent: report it in the stream
            finished = True
            error = to_http_error(exc)
            yield _sse(error_body(error.message, error.type, error.code))
        finally:
            if not finished:  # the client went away (the task was cancelled) or the stream was closed
                self.handle.cancel()
                self.state.metrics.cancelled.labels(self.endpoint).inc()
        yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# -- vLLM-style runtime adapters -----------------------------------------------------------------------
@router.post("/load_lora_adapter")
async def load_lora_adapter(body: LoraAdapterRequest, request: Request) -> JSONResponse:
    """Load a store adapter, or import the PEFT folder ``lora_path`` under ``lora_name`` and load it.

    An import runs the checks of ``adaptrix adapters import`` plus the fit to the loaded model; an
    adapter that does not fit is taken out of the store again.
    """
    engine = ready_state(request).engine
    name, store = body.lora_name, engine.adapter_manager
    source = Path(body.lora_path).expanduser().resolve() if body.lora_path else None
    imported = False
    if source is not None and source != store.path(name).resolve():
        if name in store.names():
            from adaptrix_core.errors import AdapterExistsError

            raise AdapterExistsError(f"An adapter named {name!r} is already in the store; pick another lora_name "
                                     "or unload and delete it first.")
        await run_in_threadpool(store.import_peft, source, name)
        imported = True
    try:
        meta = await run_in_threadpool(engine.load_adapter, name)
    except Exception:
        if imported:
            await run_in_threadpool(store.delete, name)
        raise
    return JSONResponse({"status": "ok", "lora_name": name, "imported": imported, "rank": meta.rank,
                         "message": f"Success: LoRA adapter '{name}' added successfully."})


@router.post("/unload_lora_adapter")
async def unload_lora_adapter(body: LoraAdapterRequest, request: Request) -> JSONResponse:
    """Take adapter ``lora_name`` out of the model (it stays in the store)."""
    engine = ready_state(request).engine
    await run_in_threadpool(engine.unload_adapter, body.lora_name)
    return JSONResponse({"status": "ok", "lora_name": body.lora_name,
                         "message": f"Success: LoRA adapter '{body.lora_name}' removed successfully."})
