"""Adaptrix's own endpoints: health, adapters, query, documents, status, metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from adaptrix_core.server.common import (
    ClientGone,
    await_result,
    ready_state,
    state_of,
    submit,
)
from adaptrix_core.server.schemas import QueryRequest

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 once the model is loaded and the scheduler runs; 503 (with the reason) before."""
    state = state_of(request)
    if state.ready.is_set():
        return JSONResponse({"status": "ok", "model": state.engine.model_id})
    status = "failed" if state.load_error else "loading"
    return JSONResponse({"status": status, "error": state.load_error}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text: requests, errors, latency and TTFT, tokens per adapter, routing, queue, batch."""
    state = state_of(request)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


# -- adapters --------------------------------------------------------------------------------------
@router.get("/adapters")
async def list_adapters(request: Request) -> dict[str, Any]:
    """Every adapter in the store (and made in memory) with its metadata, plus the loaded ones."""
    engine = ready_state(request).engine
    adapters = await run_in_threadpool(engine.list_adapters)
    return {"adapters": adapters, "loaded": engine.loaded_adapters(), "directory": str(engine.adapter_manager.directory)}


@router.post("/adapters/{name}/load")
async def load_adapter(name: str, request: Request) -> dict[str, Any]:
    """Validate adapter ``name`` and put it in the model (least recently used ones may be evicted)."""
    engine = ready_state(request).engine
    started = time.perf_counter()
    meta = await run_in_threadpool(engine.load_adapter, name)
    return {"loaded": name, "load_ms": round((time.perf_counter() - started) * 1000, 1),
            "metadata": meta.model_dump(), "loaded_adapters": engine.loaded_adapters()}


@router.post("/adapters/{name}/unload")
async def unload_adapter(name: str, request: Request) -> dict[str, Any]:
    """Take adapter ``name`` out of the model; it stays in the store (404 when it is not loaded)."""
    engine = ready_state(request).engine
    await run_in_threadpool(engine.unload_adapter, name)
    return {"unloaded": name, "loaded_adapters": engine.loaded_adapters()}


# -- generation ------------------------------------------------------------------------------------
def gen_arguments(body: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The generation keyword arguments a request set (unset ones keep the engine's defaults)."""
    return {name: getattr(body, name) for name in fields if getattr(body, name) is not None}


@router.post("/query")
async def query(body: QueryRequest, request: Request) -> Response:
    """Answer ``prompt`` like ``engine.query()``: text, adapters, routing, sources, tokens, latency, ttft_ms."""
    state = ready_state(request)
    gen = gen_arguments(body, ("max_new_tokens", "temperature", "top_p", "seed", "stop", "task_type",
                                "ignore_eos"))
    if "adapter" in body.model_fields_set:
        gen["adapter"] = body.adapter
    handle = await submit(state, prompt=body.prompt, use_rag=body.use_rag, top_k=body.top_k,
                          min_score=body.min_score, **gen)
    try:
        result = await await_result(handle, request, state, "/query")
    except ClientGone:
        return Response(status_code=499)
    state.metrics.observe_result("/query", result, handle.ttft_ms)
    return JSONResponse({"id": handle.id, **result.model_dump(mode="json"), "ttft_ms": handle.ttft_ms})


# -- documents -------------------------------------------------------------------------------------
@router.get("/documents")
async def list_documents(request: Request) -> dict[str, Any]:
    """Every document in the index under the data directory."""
    engine = ready_state(request).engine
    documents = await run_in_threadpool(engine.list_documents)
    return {"documents": documents, "data_dir": str(engine.config.rag.data_dir)}


@router.delete("/documents/{doc_id}")
async def delete_document(doc_id: str, request: Request) -> dict[str, Any]:
    """Remove a document from the index (and the uploaded file it came from); 404 for an unknown id."""
    from adaptrix_core.server.uploads import forget_upload

    engine = ready_state(request).engine
    removed = await run_in_threadpool(engine.remove_document, doc_id)
    forget_upload(engine, removed.get("source", ""))
    return {"removed": removed}


# -- status ----------------------------------------------------------------------------------------
@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """Model, device, memory, loaded adapters, queue depth and batch size."""
    return await run_in_threadpool(status_report, ready_state(request))


def status_report(state: Any) -> dict[str, Any]:
    """The ``GET /status`` answer for a ready app state (the web UI's status page shows it too)."""
    engine, scheduler = state.engine, state.scheduler
    info = engine.get_model_info()
    return {
        "model": {key: info.get(key) for key in ("model_id", "base_model", "family", "architecture", "num_layers",
                                                  "num_parameters", "dtype", "max_context", "backend")},
        "device": info["device"],
        "memory": _memory(info["device"], engine),
        "adapters": {"loaded": engine.loaded_adapters(), "cache_size": engine.config.adapters.cache_size},
        "router": engine.config.router.name,
        "queue_depth": scheduler.queue_depth,
        "batch_size": scheduler.batch_size,
        "max_batch_size": state.settings.max_batch_size,
        "max_queue": state.settings.max_queue,
        "uptime_s": round(time.time() - state.started_at, 1),
    }


def _memory(device: str, engine: Any) -> dict[str, Any]:
    import psutil

    memory = {"process_rss_bytes": psutil.Process().memory_info().rss,
              "system_available_bytes": psutil.virtual_memory().available}
    report = engine.memory_report()
    memory["base_model_bytes"] = report["base_model_bytes"]
    memory["adapter_bytes"] = report["total_adapter_bytes"]
    if str(device).startswith("cuda"):
        import torch

        memory["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
        memory["cuda_reserved_bytes"] = torch.cuda.memory_reserved()
    return memory
