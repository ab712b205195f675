"""Errors as the OpenAI API shapes them: ``{"error": {"message", "type", "param", "code"}}``.

One table (:data:`ERROR_TABLE`) maps Adaptrix's typed errors onto HTTP statuses; the handlers
installed by :func:`install_error_handlers` turn every failure into that shape. FastAPI's 422 for a
body that fails validation (or is not JSON at all) becomes a 400, and an unexpected exception
becomes a 500 whose message names a request id to find in the server log: a traceback never
leaves the server.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adaptrix_core import errors as E

log = logging.getLogger("adaptrix.server")


class HTTPError(Exception):
    """An error the server answers with ``status`` and an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers


#: Adaptrix error type -> (HTTP status, OpenAI error type, code). The most specific class wins.
ERROR_TABLE: dict[type, tuple[int, str, str | None]] = {
    E.AdapterNotFoundError: (404, "not_found_error", "adapter_not_found"),
    E.DocumentNotFoundError: (404, "not_found_error", "document_not_found"),
    E.ModelNotFoundError: (404, "not_found_error", "model_not_found"),
    E.InvalidGenerationParameterError: (400, "invalid_request_error", "invalid_parameter"),
    E.InvalidPromptError: (400, "invalid_request_error", "invalid_prompt"),
    E.ContextOverflowError: (400, "invalid_request_error", "context_length_exceeded"),
    E.AdapterExistsError: (400, "invalid_request_error", "adapter_exists"),
    E.AdapterIncompatibleError: (400, "invalid_request_error", "adapter_incompatible"),
    E.AdapterIntegrityError: (400, "invalid_request_error", "adapter_integrity"),
    E.AdapterCorruptError: (400, "invalid_request_error", "adapter_corrupt"),
    E.AdapterError: (400, "invalid_request_error", "adapter_error"),
    E.DocumentError: (400, "invalid_request_error", "document_error"),
    E.TrainingDataError: (400, "invalid_request_error", "invalid_data"),
    E.ConfigError: (400, "invalid_request_error", "invalid_configuration"),
    E.QueueFullError: (429, "rate_limit_error", "queue_full"),
    E.SchedulerStoppedError: (503, "service_unavailable", "shutting_down"),
    E.RequestCancelledError: (499, "invalid_request_error", "request_cancelled"),
    E.EngineClosedError: (503, "service_unavailable", "engine_closed"),
    E.IndexCorruptError: (500, "server_error", "index_corrupt"),
    E.AdaptrixError: (500, "server_error", None),
}


def classify(exc: BaseException) -> tuple[int, str, str | None]:
    """(status, type, code) for an Adaptrix error: the entry of its nearest class in the table."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "server_error", None


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, code, param), status_code=status, headers=headers)


def to_http_error(exc: BaseException) -> HTTPError:
    """Any exception as an :class:`HTTPError` (unexpected ones logged with a traceback and an id)."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, E.AdaptrixError):
        status, kind, code = classify(exc)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return HTTPError(status, str(exc), kind, code, headers=headers)
    incident = uuid.uuid4().hex[:12]
    log.error("Unexpected error (incident %s)", incident, exc_info=exc)
    return HTTPError(500, f"Internal server error (incident {incident}; details are in the server log).",
                     "server_error", "internal_error")


_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 415: "invalid_request_error", 429: "rate_limit_error"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    problems, param = [], None
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ".".join(location)
        if error.get("type") == "json_invalid":
            return f"The request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')}).", None
        if not location and error.get("type") in ("model_attributes_type", "dict_type", "missing"):
            return "The request body must be a JSON object (sent with Content-Type: application/json).", None
        param = param or where or None
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        problems.append(f"{where or 'body'}: {error.get('msg')} (got {shown})" if "input" in error
                        else f"{where or 'body'}: {error.get('msg')}")
    return "Invalid request: " + "; ".join(problems[:5]), param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the OpenAI shape (see the module docstring)."""

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)

    @app.exception_handler(E.AdaptrixError)
    async def _adaptrix_error(request: Request, exc: E.AdaptrixError) -> JSONResponse:
        error = to_http_error(exc)
        return error_response(error.status, error.message, error.type, error.code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"No endpoint {request.method} {request.url.path}."
        return error_response(exc.status_code, message, _STATUS_TYPES.get(exc.status_code, "server_error"),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = to_http_error(exc)
        return error_response(error.status, error.message, error.type, error.code)
