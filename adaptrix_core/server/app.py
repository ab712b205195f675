"""The FastAPI application behind ``adaptrix serve``: ``create_app(engine=None, settings=None)``.

Everything lives on ``app.state.adaptrix`` (a :class:`ServerState`): the engine, the scheduler that
batches generation requests, the settings and the metrics; there are no module globals, so several
apps can live in one process. The model loads on a background thread when the app starts, so
``GET /health`` answers 503 until it is ready and 200 afterwards; other endpoints answer 503 while
it loads. Shutting down (Ctrl-C / SIGTERM through uvicorn) lets in-flight requests finish, then
drains and stops the scheduler.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from adaptrix_core.config import ServerSettings, load_config
from adaptrix_core.server.errors import HTTPError, error_body, install_error_handlers
from adaptrix_core.server.metrics import ServerMetrics
from adaptrix_core.server.ui_auth import is_ui_path, refuse, ui_request_allowed

log = logging.getLogger("adaptrix.server")
OPEN_PATHS = frozenset({"/health"})
UNCOUNTED_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapes would drown the request counts
UI_UPLOAD_PATH = "/ui/gradio_api/upload"  # the web UI's file uploads: Gradio bounds them by max_upload_bytes


class ServerState:
    """The engine, scheduler, settings and metrics of one app (``app.state.adaptrix``)."""

    def __init__(self, engine: Any, settings: ServerSettings, owns_engine: bool):
        self.engine, self.settings, self.owns_engine = engine, settings, owns_engine
        self.scheduler: Any = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.started_at = time.time()
        self.on_load_error: Callable[[BaseException], None] | None = None
        self.on_ready: Callable[[], None] | None = None  # called once loaded, before requests are served
        self.metrics = ServerMetrics(lambda: self.scheduler.queue_depth if self.scheduler else 0,
                                     lambda: self.scheduler.batch_size if self.scheduler else 0)
        self._loader: threading.Thread | None = None

    def require_ready(self) -> Any:
        """The scheduler, or a 503 while the model loads (or after it failed to load)."""
        if self.ready.is_set():
            return self.scheduler
        if self.load_error:
            raise HTTPError(503, f"The model failed to load: {self.load_error}", "service_unavailable", "load_failed")
        raise HTTPError(503, "The model is still loading; retry when GET /health answers 200.",
                        "service_unavailable", "model_loading", headers={"Retry-After": "2"})

    def base_model_ids(self) -> tuple[str, ...]:
        """Names a client may use for the base model: the canonical id first, then the configured id."""
        info = self.engine.get_model_info()
        return tuple(dict.fromkeys([info["base_model"], str(self.engine.model_id)]))

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._loader = threading.Thread(target=self._load, name="adaptrix-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            self.engine.initialize()
            self._warm_router()
            self.scheduler = make_scheduler(self.engine, self.settings)
            self.scheduler.start()
            if self.on_ready is not None:
                self.on_ready()
            self.ready.set()
            log.info("Model %s ready on %s", self.engine.model_id, self.engine.get_model_info()["device"])
        except Exception as exc:
            self.load_error = str(exc) if str(exc) else type(exc).__name__
            if self.on_load_error is not None:
                self.on_load_error(exc)  # the caller reports it (adaptrix serve prints it and exits 1)
            else:
                log.error("The model failed to load: %s", self.load_error, exc_info=not _is_typed(exc))

    def _warm_router(self) -> None:
        """Build the configured router (and its embedder) now rather than in the first 'auto' request."""
        if not self.engine.config.router.name:
            return
        from adaptrix_core.errors import AdaptrixError

        try:
            self.engine.route("warm up")
        except AdaptrixError as exc:
            log.warning("Router %r is not usable yet: %s", self.engine.config.router.name, exc)

    def stop(self) -> None:
        if self._loader is not None:
            self._loader.join(timeout=self.settings.drain_timeout)
        if self.scheduler is not None:
            self.scheduler.stop(drain=True, timeout=self.settings.drain_timeout)
        if self.owns_engine:
            self.engine.cleanup()


def _is_typed(exc: BaseException) -> bool:
    from adaptrix_core.errors import AdaptrixError

    return isinstance(exc, AdaptrixError)


def make_scheduler(engine: Any, settings: ServerSettings) -> Any:
    """The request scheduler for ``engine``, bounded by ``settings``; not started."""
    from adaptrix_core.server.scheduler import Scheduler

    return Scheduler(engine, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue)


class AuthMiddleware:
    """Refuse requests without ``Authorization: Bearer <api_key>`` (when a key is set), before any parsing.

    Under ``/ui`` the web UI's cookie (set by the key page, see ``ui_auth``) counts as the key too.
    """

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app, self.key = app, (api_key or "").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        if is_ui_path(scope["path"]):
            if ui_request_allowed(scope, self.key):
                return await self.app(scope, receive, send)
            return await refuse(scope, send)
        body = json.dumps(error_body("Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                                     "authentication_error", "invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, counting them as they arrive.

    The body (JSON, at most ``limit`` bytes) is read here and handed on whole; ``/upload`` counts its
    own, larger limit while it parses.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH")
                or scope["path"] in ("/upload", UI_UPLOAD_PATH)):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        handed = False

        async def replay() -> dict:
            nonlocal handed
            if handed:
                return await receive()  # later reads wait for the disconnect, as usual
            handed = True
            return whole

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(f"The request body is larger than {self.limit:,} bytes (server.max_request_bytes).",
                                     "invalid_request_error", "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Count every answer by endpoint (the route's path template) and status; the web UI's page, assets
    and polling are not counted (its generations are, under the endpoint ``/ui``)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI):
        self.app, self.fastapi_app = app, fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED_PATHS or is_ui_path(scope["path"]):
            return await self.app(scope, receive, send)
        status = 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            state: ServerState = self.fastapi_app.state.adaptrix
            state.metrics.observe_status(self._endpoint(scope), status)

    def _endpoint(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return route.path
        from starlette.routing import Match

        for candidate in self.fastapi_app.router.routes:
            if candidate.matches(scope)[0] != Match.NONE:
                return getattr(candidate, "path", "other")
        return "other"


def create_app(engine: Any = None, settings: ServerSettings | None = None) -> FastAPI:
    """The Adaptrix HTTP app: native endpoints, OpenAI-compatible ``/v1``, ``/metrics``, the web UI at ``/ui``.

    ``engine`` (a ``ModularAdaptrixEngine``, initialized or not) is used as given and left open at
    shutdown; without it one is built from the configuration (``ADAPTRIX_CONFIG``, ``ADAPTRIX_*``)
    and cleaned up at shutdown. ``settings`` defaults to the engine configuration's ``server``
    section.
    """
    owns_engine = engine is None
    if engine is None:
        from adaptrix_core.engine import ModularAdaptrixEngine

        engine = ModularAdaptrixEngine(config=load_config())
        engine.monitor.source = "server"
    if settings is None:
        settings = engine.config.server
    state = ServerState(engine, settings, owns_engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(state.stop)

    app = FastAPI(title="Adaptrix", version=_version(), lifespan=lifespan,
                  description="A small language model with many LoRA adapters: native and OpenAI-compatible API.")
    app.state.adaptrix = state
    install_error_handlers(app)
    from adaptrix_core.server import native, openai_api, uploads

    app.include_router(native.router)
    app.include_router(uploads.router)
    app.include_router(openai_api.router)
    if settings.ui:
        from adaptrix_core.server.ui import mount_ui

        mount_ui(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    app.add_middleware(AuthMiddleware, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, fastapi_app=app)
    return app


def _version() -> str:
    from adaptrix_core import __version__

    return __version__
