"""HTTP client of the ``remote`` backend: one pooled ``httpx.Client`` per engine, retries, typed errors, SSE.

Retries: a refused connection (or a connect timeout), a 429 and a 503 are tried again up to
``retries`` times, after ``backoff * 2**n`` seconds, or after the upstream's ``Retry-After`` when it
sends one; a wait longer than ``max_backoff`` is not made (the error says how long the upstream
asked for). Anything else is answered at once: a request that reached the server is never sent twice
(a LoRA load is not idempotent, and a generation is expensive).

Every failure becomes ``RemoteBackendError`` (the upstream answered with an error) or
``UpstreamUnavailableError`` (no usable answer), carrying the URL, the status and the upstream's own
message, whatever shape its error body has: vLLM's ``{"object": "error", "message", "type", "code"}``,
OpenAI's ``{"error": {"message", "type", "param", "code"}}``, ``{"error": "Unauthorized"}``, FastAPI's
``{"detail": ...}`` or plain text.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

from adaptrix_core.errors import RemoteBackendError, UpstreamUnavailableError
from adaptrix_plugins.backends.remote.settings import RemoteSettings

RETRY_STATUSES = frozenset({429, 503})
MAX_MESSAGE = 600  # characters of an upstream message kept in an error (HTML error pages can be huge)


class RemoteClient:
    """Talks to one OpenAI-compatible server at ``base_url`` (e.g. ``http://vllm:8000/v1``)."""

    def __init__(self, base_url: str, settings: RemoteSettings, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        from adaptrix_core import __version__

        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self._sleep = sleep
        headers = {"User-Agent": f"adaptrix/{__version__}"}
        key = settings.resolved_api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            base_url=self.base_url + "/", headers=headers, transport=transport,
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(max_connections=settings.max_connections,
                                max_keepalive_connections=settings.max_connections),
        )

    # -- requests -------------------------------------------------------------------------------------
    def get_json(self, path: str) -> Any:
        """GET ``path`` (relative to the base URL) and return its JSON."""
        return _json_of(self.send("GET", path), self._url(path))

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` as JSON and return the JSON answer."""
        return _json_of(self.send("POST", path, body), self._url(path))

    def post_text(self, path: str, body: dict[str, Any]) -> str:
        """POST ``body`` as JSON and return the answer as text (vLLM answers LoRA loads in plain text)."""
        return self.send("POST", path, body).text

    def post_stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``body`` and yield the JSON of each server-sent event until ``[DONE]``.

        The connection is retried like any request until the status line arrives; afterwards an error
        event in the stream raises ``RemoteBackendError``. Closing the iterator closes the connection,
        which makes vLLM abort the generation.
        """
        url = self._url(path)
        response = self.send("POST", path, body, stream=True)
        try:
            for data in iter_sse_data(_lines(response, url, self.settings.timeout)):
                if data.strip() == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    raise RemoteBackendError(
                        f"The upstream server at {url} sent a stream event that is not JSON: {data[:200]!r}.",
                        url=url, status=response.status_code, upstream_message=data[:MAX_MESSAGE]) from None
                if isinstance(event, dict) and ("error" in event or event.get("object") == "error"):
                    message, error_type, code = error_fields(event)
                    raise RemoteBackendError(
                        f"The upstream server at {url} failed during the stream: {message}", url=url,
                        status=response.status_code, upstream_message=message, error_type=error_type, code=code)
                yield event
        finally:
            response.close()

    def send(self, method: str, path: str, body: dict[str, Any] | None = None, stream: bool = False) -> httpx.Response:
        """Send one request with the retry policy; a response with status >= 400 raises a typed error."""
        url = self._url(path)
        retries = self.settings.retries
        for attempt in range(retries + 1):
            try:
                request = self._http.build_request(method, path.lstrip("/"), json=body)
                response = self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt < retries:
                    self._sleep(self._delay(attempt, None))
                    continue
                raise UpstreamUnavailableError(
                    f"Cannot connect to the upstream server at {url} ({_reason(exc)}) after {attempt + 1} "
                    f"tr{'y' if attempt == 0 else 'ies'}. Check that it runs and that the URL is right "
                    "(e.g. http://host:8000/v1).", url=url) from None
            except httpx.TimeoutException:
                raise UpstreamUnavailableError(
                    f"The upstream server at {url} did not answer within {self.settings.timeout:g} s "
                    "(plugins.remote.timeout).", url=url) from None
            except httpx.TransportError as exc:
                raise UpstreamUnavailableError(
                    f"The connection to the upstream server at {url} failed: {_reason(exc)}.", url=url) from None
            if response.status_code in RETRY_STATUSES and attempt < retries:
                wait = retry_after(response.headers.get("retry-after"))
                if wait is not None and wait > self.settings.max_backoff:
                    raise self._error(response, url, suffix=f" It asked to retry after {wait:g} s, longer than "
                                      f"plugins.remote.max_backoff ({self.settings.max_backoff:g} s).")
                response.close()
                self._sleep(self._delay(attempt, wait))
                continue
            if response.status_code >= 400:
                raise self._error(response, url, f" (after {attempt + 1} tries)" if attempt else "")
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        """Close every pooled connection."""
        self._http.close()

    # -- helpers --------------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.settings.max_backoff)
        return min(self.settings.backoff * (2 ** attempt), self.settings.max_backoff)

    def _error(self, response: httpx.Response, url: str, note: str = "", suffix: str = "") -> RemoteBackendError:
        try:
            response.read()
        except httpx.HTTPError:
            pass
        finally:
            response.close()
        message, error_type, code = error_fields(_body_of(response))
        status = response.status_code
        hint = suffix
        if status in (401, 403):
            hint += " Set the upstream's API key in ADAPTRIX_REMOTE_API_KEY or plugins.remote.api_key."
        kind = UpstreamUnavailableError if status in RETRY_STATUSES or status in (502, 504) else RemoteBackendError
        return kind(f"The upstream server at {url} answered {status}{note}: {message}{hint}", url=url, status=status,
                    upstream_message=message, error_type=error_type, code=code)


def _json_of(response: httpx.Response, url: str) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RemoteBackendError(
            f"The upstream server at {url} answered {response.status_code} with a body that is not JSON: "
            f"{response.text[:200]!r}. Is this an OpenAI-compatible server?", url=url,
            status=response.status_code, upstream_message=response.text[:MAX_MESSAGE]) from None


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def error_fields(body: Any) -> tuple[str, str | None, Any]:
    """(message, type, code) of an upstream error body of any of the shapes in the module docstring."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            body = inner
        elif isinstance(inner, str) and "message" not in body:
            return inner[:MAX_MESSAGE], None, None
        message = body.get("message", body.get("detail"))
        if message is not None and not isinstance(message, str):
            message = json.dumps(message)[:MAX_MESSAGE]
        error_type = body.get("type")
        return ((message or json.dumps(body))[:MAX_MESSAGE], error_type if isinstance(error_type, str) else None,
                body.get("code"))
    text = str(body).strip()
    return (text[:MAX_MESSAGE] or "(empty body)"), None, None


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines; comments skipped)."""
    data: list[str] = []
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _lines(response: httpx.Response, url: str, timeout: float) -> Iterator[str]:
    try:
        yield from response.iter_lines()
    except httpx.TimeoutException:
        raise UpstreamUnavailableError(
            f"The upstream server at {url} sent nothing for {timeout:g} s in the middle of a stream "
            "(plugins.remote.timeout).", url=url, status=response.status_code) from None
    except httpx.TransportError as exc:
        raise UpstreamUnavailableError(
            f"The stream from the upstream server at {url} broke off: {_reason(exc)}.", url=url,
            status=response.status_code) from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
