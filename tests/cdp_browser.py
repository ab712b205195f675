"""A headless Chromium driven over the Chrome DevTools Protocol through a pipe: no Python packages needed.

``Browser.start()`` runs ``chromium --headless --remote-debugging-pipe`` (commands go in on fd 3,
answers and events come out on fd 4, each a JSON object ended by a NUL byte) and attaches to its
first page. The page helpers click at an element's centre and type with real input events, so the
page's own handlers run as they would for a person.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary: $ADAPTRIX_CHROMIUM, else the first candidate on the PATH."""
    named = os.environ.get("ADAPTRIX_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


class BrowserError(RuntimeError):
    """A DevTools command failed, or the page never reached the awaited state."""


class Browser:
    """One headless Chromium process and its first page (use ``with Browser.start(...) as page``)."""

    def __init__(self, process: subprocess.Popen, commands: int, answers: int) -> None:
        self.process, self._out, self._in = process, os.fdopen(commands, "wb"), os.fdopen(answers, "rb")
        self._ids = itertools.count(1)
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    @classmethod
    def start(cls, binary: str, profile: Path, width: int = 1280, height: int = 1000) -> Browser:
        commands_read, commands_write = os.pipe()
        answers_read, answers_write = os.pipe()

        def wire_fds() -> None:  # in the child: the pipe ends become fds 3 (commands) and 4 (answers)
            # Copies first, so neither end is overwritten before it is copied; dup2's targets are
            # inheritable, so they survive exec (every other descriptor is close-on-exec).
            low, high = os.dup(commands_read), os.dup(answers_write)
            os.dup2(low, 3)
            os.dup2(high, 4)

        process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            close_fds=False, preexec_fn=wire_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(answers_write)
        browser = cls(process, commands_write, answers_read)
        try:
            target = next(t for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            browser.session = browser.send("Target.attachToTarget", targetId=target["targetId"],
                                           flatten=True)["sessionId"]
            browser.page("Page.enable")
            browser.page("Runtime.enable")
            browser.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                         mobile=False)
        except BaseException:
            browser.close()
            raise
        return browser

    # -- protocol ----------------------------------------------------------------------------------
    def _read(self) -> None:
        buffer = b""
        while True:
            block = self._in.read1(1 << 16)
            if not block:
                break
            buffer += block
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._answers[message["id"]] = message
                        self._cond.notify_all()
        with self._cond:
            self._answers[-1] = {"error": {"message": "the browser closed its pipe"}}
            self._cond.notify_all()

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Run one DevTools command and return its result (raises BrowserError on an error answer)."""
        number = next(self._ids)
        message = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        self._out.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: number in self._answers or -1 in self._answers, timeout):
                raise BrowserError(f"{method} got no answer within {timeout} s")
            answer = self._answers.pop(number, None) or self._answers[-1]
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        """A DevTools command in the page's session."""
        return self.send(method, session=self.session, **params)

    # -- page helpers ------------------------------------------------------------------------------
    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        answer = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression[:80]!r} threw: {answer['exceptionDetails'].get('text')} "
                               f"{answer['exceptionDetails'].get('exception', {}).get('description', '')}")
        return answer["result"].get("value")

    def navigate(self, url: str) -> None:
        self.page("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 20, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for {what or expression}")
            time.sleep(0.05)

    def click(self, selector: str, text: str | None = None) -> None:
        """A real mouse click at the centre of the first element matching ``selector`` (and holding ``text``)."""
        box = self.evaluate(f"""(() => {{
            const all = [...document.querySelectorAll({json.dumps(selector)})];
            const el = all.find(e => {json.dumps(text)} === null || e.textContent.trim() === {json.dumps(text)});
            if (!el) return null;
            el.scrollIntoView({{block: 'center'}});
            const r = el.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }})()""")
        if not box:
            raise BrowserError(f"no element {selector!r}" + (f" with text {text!r}" if text else ""))
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type_text(self, text: str) -> None:
        """Type into the focused element as a keyboard would."""
        self.page("Input.insertText", text=text)

    def press(self, key: str, code: int) -> None:
        """Press and release one key (e.g. 'Enter', 13) in the focused element."""
        for kind in ("keyDown", "keyUp"):
            self.page("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code,
                      text="\r" if key == "Enter" and kind == "keyDown" else "")

    def screenshot(self, path: Path) -> None:
        """Save a PNG of the whole page."""
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        data = self.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, OSError, ValueError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self._out, self._in):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
