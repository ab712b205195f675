"""Helpers shared by the route modules: the app state, submitting to the scheduler, awaiting results."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from adaptrix_core.server.errors import HTTPError

DISCONNECT_POLL_S = 0.1


class ClientGone(Exception):
    """The client closed the connection before its answer was ready (its request was cancelled)."""


def state_of(request: Request):
    """The app's :class:`~adaptrix_core.server.app.ServerState`."""
    return request.app.state.adaptrix


def ready_state(request: Request):
    """The app state once the model is loaded (503 before)."""
    state = state_of(request)
    state.require_ready()
    return state


async def submit(state: Any, **arguments: Any) -> Any:
    """Hand a request to the scheduler; its checks, routing and retrieval run off the event loop.

    Bad arguments raise the engine's typed errors here, before any response is started.
    """
    return await run_in_threadpool(state.scheduler.submit, **arguments)


async def await_result(handle: Any, request: Request, state: Any, endpoint: str) -> Any:
    """The handle's QueryResult; if the client disconnects first, cancel the request and raise ClientGone."""
    task = asyncio.ensure_future(handle.aresult())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                handle.cancel()
                state.metrics.cancelled.labels(endpoint).inc()
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


def adapter_for_model(state: Any, model: str) -> Any:
    """The ``adapter`` argument an OpenAI ``model`` field stands for: None (base), a name, or "auto".

    Unknown models are a 404 that lists what is served.
    """
    if not isinstance(model, str) or not model:
        raise HTTPError(400, "'model' must be a non-empty string: the base model id, an adapter name or 'auto'.",
                        code="invalid_parameter", param="model")
    if model in state.base_model_ids():
        return None
    if model == "auto":
        return "auto"
    engine = state.engine
    if model in engine.adapter_manager.names() or model in engine.loaded_adapters():
        return model
    served = ", ".join([state.base_model_ids()[0], *engine.adapter_manager.names(), "auto"])
    raise HTTPError(404, f"The model {model!r} does not exist. Served models: {served} (GET /v1/models).",
                    "not_found_error", "model_not_found", param="model")


def adaptrix_block(result: Any) -> dict[str, Any]:
    """The extra top-level ``adaptrix`` object of every OpenAI-style response: what ran."""
    return {"adapters": dict(result.adapter_weights), "routing": result.routing, "sources": list(result.sources)}
