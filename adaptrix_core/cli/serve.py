"""``adaptrix serve``: the HTTP server (native endpoints, OpenAI-compatible /v1, /metrics) under uvicorn.

The model loads in the background once the socket is bound, so ``GET /health`` says 503 until it
is ready. Ctrl-C or SIGTERM stops accepting connections, lets in-flight requests finish (up to
``server.drain_timeout`` seconds), drains the scheduler and exits with status 0; a model that
fails to load ends the process with status 1 and the reason.
"""

from __future__ import annotations

import logging
import sys

import click

from adaptrix_core.cli.common import EngineOptions, model_options
from adaptrix_core.cli.output import handle_errors
from adaptrix_core.errors import AdaptrixError


@click.command()
@model_options
@click.option("--host", help="Interface to bind (default: server.host, 127.0.0.1 — this machine only).")
@click.option("--port", type=int, help="TCP port (default: server.port, 8000).")
@click.option("--data-dir", help="Document index folder for /upload and RAG (default: rag.data_dir, ./rag_index).")
@click.option("--router", "router_name", help="Router for model/adapter 'auto': keyword, semantic, classifier, hybrid.")
@click.option("--api-key", help="Require 'Authorization: Bearer KEY' (default: server.api_key or $ADAPTRIX_API_KEY).")
@click.option("--max-batch-size", type=int, help="Requests decoded together (default: server.max_batch_size, 8).")
@click.option("--max-queue", type=int, help="Requests allowed to wait (default: server.max_queue, 64).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn log level.")
@handle_errors
def serve(opts: EngineOptions, host, port, data_dir, router_name, api_key, max_batch_size, max_queue,
          log_level) -> None:
    """Serve the model and its adapters over HTTP (REST + OpenAI-compatible API)."""
    import uvicorn

    from adaptrix_core.cli.output import quiet_libraries as _quiet_libraries
    from adaptrix_core.config import load_config
    from adaptrix_core.engine import ModularAdaptrixEngine
    from adaptrix_core.server import create_app

    _quiet_libraries()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logging.getLogger("adaptrix").addHandler(handler)  # model ready / load failures / scheduler problems
    logging.getLogger("adaptrix").setLevel(log_level.upper())
    config = load_config(path=opts.config_path, overrides={
        "model": {"model_id": opts.model_id, "device": opts.device, "backend": opts.backend},
        "adapters": {"directory": opts.adapters_dir},
        "rag": {"data_dir": data_dir},
        "router": {"name": router_name},
        "server": {"host": host, "port": port, "api_key": api_key, "max_batch_size": max_batch_size,
                   "max_queue": max_queue},
    })
    settings = config.server
    engine = ModularAdaptrixEngine(config=config)
    engine.monitor.source = "server"
    app = create_app(engine, settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                                           timeout_graceful_shutdown=int(settings.drain_timeout) or 1,
                                           access_log=log_level == "debug"))
    state = app.state.adaptrix

    def load_failed(exc: BaseException) -> None:
        if not isinstance(exc, AdaptrixError):  # a bug, not bad input: keep its traceback for the report
            logging.getLogger("adaptrix.server").error("The model failed to load", exc_info=exc)
        server.should_exit = True

    state.on_load_error = load_failed
    state.on_ready = freeze_startup_heap
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        click.echo(f"warning: listening on {settings.host} without an API key; anyone who can reach the port "
                   "can use the model (set --api-key).", err=True)
    signals = _quiet_signal_handlers()
    try:
        server.run()  # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the handlers below
    finally:
        engine.cleanup()
        _restore(signals)
    if state.load_error:
        click.echo(f"Error: the model failed to load: {state.load_error}", err=True)
        sys.exit(1)


def _quiet_signal_handlers() -> dict:
    """Make the signal uvicorn re-raises after its graceful shutdown a no-op, so the exit status is 0."""
    import signal

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: None)
    return previous


def _restore(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)


def freeze_startup_heap() -> None:
    """Move what the server loaded (model, adapter cards, router state) out of the garbage collector's sight.

    They live as long as the process; left in view, each full collection walks them all: 269 ms at
    1,000 adapter cards, a pause charged to whichever request triggered it (docs/scale-out.md).
    """
    import gc

    gc.collect()
    gc.freeze()
