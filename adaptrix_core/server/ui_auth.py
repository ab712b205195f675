"""The API key in front of the web UI (``/ui``), for browsers that cannot send a Bearer header.

When the server has an API key, a request under ``/ui`` passes with ``Authorization: Bearer <key>``
or with the ``adaptrix_ui`` cookie. A browser without either gets 401 and a page with a key field;
posting the right key to ``/ui/auth`` sets the cookie (HttpOnly, SameSite=Strict, path ``/ui``)
and sends it back to the UI. The cookie holds an HMAC of the key, never the key, and opens only
``/ui``: the other endpoints still need the header.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from http.cookies import CookieError, SimpleCookie

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Scope, Send

UI_PATH = "/ui"
AUTH_PATH = "/ui/auth"
COOKIE = "adaptrix_ui"

router = APIRouter()


def is_ui_path(path: str) -> bool:
    """True for ``/ui`` and everything under it."""
    return path == UI_PATH or path.startswith(UI_PATH + "/")


def ui_token(key: bytes) -> str:
    """The cookie value that stands for ``key`` (an HMAC, so the key itself never sits in the browser)."""
    return hmac.new(key, b"adaptrix web ui", hashlib.sha256).hexdigest()


def ui_request_allowed(scope: Scope, key: bytes) -> bool:
    """A request under ``/ui`` may pass: it is the key form's target or carries the UI cookie."""
    if scope["path"] == AUTH_PATH:
        return True
    header = dict(scope["headers"]).get(b"cookie", b"").decode("latin-1")
    cookies = SimpleCookie()
    try:
        cookies.load(header)
    except CookieError:
        return False
    morsel = cookies.get(COOKIE)
    return morsel is not None and hmac.compare_digest(morsel.value.encode(), ui_token(key).encode())


def key_page(root_path: str = "", message: str = "") -> str:
    """The HTML page with the key field (posted to ``/ui/auth``)."""
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    action = html.escape(f"{root_path}{AUTH_PATH}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Adaptrix - API key</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}
input{{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box;margin:.5rem 0}}.error{{color:#b00020}}</style>
</head><body><h1>Adaptrix</h1><p>This server needs its API key.</p>{note}
<form method="post" action="{action}"><label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus required>
<input type="submit" value="Open the web UI"></form></body></html>"""


async def refuse(scope: Scope, send: Send) -> None:
    """401 for a request under ``/ui`` without the key: the key page for the UI's page, JSON otherwise."""
    if scope["path"] in (UI_PATH, UI_PATH + "/"):
        body, content_type = key_page(scope.get("root_path", "")).encode(), b"text/html; charset=utf-8"
    else:
        from adaptrix_core.server.errors import error_body

        body = json.dumps(error_body("Missing or wrong API key: open /ui and enter the key, or send the header "
                                     "'Authorization: Bearer <key>'.", "authentication_error",
                                     "invalid_api_key")).encode()
        content_type = b"application/json"
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": body})


@router.post(AUTH_PATH, include_in_schema=False)
async def authenticate(request: Request) -> Response:
    """Check the key typed into the key page; the right one sets the UI cookie and opens the UI."""
    key = (request.app.state.adaptrix.settings.api_key or "").encode()
    root = request.scope.get("root_path", "")
    form = await request.form(max_files=0, max_fields=4)
    typed = form.get("key")
    typed = typed.encode() if isinstance(typed, str) else b""
    if key and not hmac.compare_digest(typed, key):
        return HTMLResponse(key_page(root, "That is not the server's API key."), status_code=401)
    answer = RedirectResponse(f"{root}{UI_PATH}/", status_code=303)
    if key:
        answer.set_cookie(COOKIE, ui_token(key), path=f"{root}{UI_PATH}", httponly=True, samesite="strict")
    return answer
