"""Take the README's pictures of the web UI: the default model and the demo adapters in a real browser.

    .venv/bin/python scripts/ui_screenshot.py            # writes docs/images/ui.png and ui-metrics.png

Starts ``adaptrix serve --router classifier`` on a free port (the default model, ./adapters), asks
one question with a chosen adapter and one routed by ``auto`` in a headless Chromium (see
tests/cdp_browser.py), and saves the chat and the metrics tab. Needs Chromium and the 'ui' extra.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from cdp_browser import Browser, find_chromium  # noqa: E402

BOT_TEXTS = "[...document.querySelectorAll('#chat [data-testid=bot]')].map(e => e.textContent)"


def ask(page: Browser, adapter: str, prompt: str, answers: int) -> None:
    page.click("#adapter-picker input")
    page.click(f'ul.options li[aria-label="{adapter}"]')
    page.click("#prompt textarea")
    page.type_text(prompt)
    page.press("Enter", 13)
    page.wait_for(f"{BOT_TEXTS}.filter(t => t.includes('Tokens:')).length >= {answers}", 180, f"answer {answers}")


def main() -> None:
    binary = find_chromium()
    if binary is None:
        sys.exit("No Chromium found: apt-get install chromium (or set ADAPTRIX_CHROMIUM).")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "adaptrix_core.cli", "serve", "--port", str(port),
                               "--router", "classifier", "--log-level", "warning"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("adaptrix serve did not become ready.")
            time.sleep(0.5)
        images = REPO / "docs" / "images"
        images.mkdir(parents=True, exist_ok=True)
        profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"adaptrix-ui-shot-{os.getpid()}"
        with Browser.start(binary, profile, height=1100) as page:
            page.navigate(f"{url}/ui/")
            page.wait_for("!!document.querySelector('#prompt textarea')", 60, "the Gradio app")
            page.wait_for("document.querySelector('#adapter-picker input').value === 'auto'", 30, "the adapter list")
            ask(page, "dates", "Convert this date to ISO format (YYYY-MM-DD): March 5, 2021", 1)
            ask(page, "auto", "Extract name, age, city and job as JSON: Ana Ruiz, 31, is a pilot in Quito.", 2)
            time.sleep(1)  # the details box opens with an animation
            page.screenshot(images / "ui.png")
            page.click("button[role=tab]:nth-child(2)")
            page.click("#compare-prompt textarea")
            page.type_text("Solve and reply with only the final number. 12 apples plus 30 apples?")
            page.click("#right-adapter input")
            page.click('ul.options li[aria-label="arithmetic"]')
            page.click("#compare")
            notes = "['#left-notes', '#right-notes'].map(s => document.querySelector(s).textContent)"
            page.wait_for(f"{notes}.every(t => t.includes('Tokens'))", 180, "both answers")
            page.click("button[role=tab]:nth-child(5)")
            page.wait_for("document.body.innerText.includes('model.family')", 30, "the status table")
            time.sleep(1)  # the charts draw after their data arrives
            page.screenshot(images / "ui-metrics.png")
        print(f"wrote {images / 'ui.png'} and {images / 'ui-metrics.png'}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
