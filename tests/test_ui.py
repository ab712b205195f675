"""The web UI at /ui: the page and its API key (test client), what its handlers do (the app's own
scheduler, metrics and upload path), and a real headless Chromium against a real ``adaptrix serve``.

The browser test (marked ``browser``) needs a Chromium binary (Debian: ``apt-get install chromium``;
or ``ADAPTRIX_CHROMIUM=/path/to/chrome``) and is skipped, saying so, without one. It drives the
browser over the DevTools protocol (tests/cdp_browser.py, no Python packages). Its screenshot goes
to a temporary folder, or to ``$ADAPTRIX_UI_SCREENSHOT`` when set: run
``ADAPTRIX_UI_SCREENSHOT=docs/images/ui.png pytest -m browser tests/test_ui.py`` to refresh the
README's picture.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cdp_browser import Browser, find_chromium
from fastapi.testclient import TestClient
from server_support import train_adapters, wait_until_healthy

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.config import ServerSettings
from adaptrix_core.errors import InvalidGenerationParameterError
from adaptrix_core.server import create_app
from adaptrix_core.server import ui_actions as actions
from adaptrix_core.server.errors import HTTPError
from adaptrix_core.server.ui_auth import COOKIE

REPO = Path(__file__).resolve().parents[1]
KEY = "sesame-123"
try:
    import gradio  # noqa: F401

    HAS_GRADIO = True
except ImportError:
    HAS_GRADIO = False
needs_gradio = pytest.mark.skipif(not HAS_GRADIO, reason="gradio is not installed (pip install 'adaptrix[ui]')")


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory, single_torch_thread):
    root = tmp_path_factory.mktemp("ui")
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(root / "adapters"),
                                   config={"rag": {"data_dir": str(root / "index"), "min_score": 0.0}},
                                   router="keyword")
    engine.initialize()
    train_adapters(engine)
    yield engine
    engine.cleanup()


@pytest.fixture(scope="module")
def app(engine):
    app = create_app(engine, ServerSettings(api_key=KEY))
    with TestClient(app) as client:
        wait_until_healthy(client.get)
        yield app


@pytest.fixture()
def client(app):
    return TestClient(app)  # a cookie jar of its own for each test; the app's lifespan runs in ``app``


# -- the page and the key ------------------------------------------------------------------------------
@needs_gradio
def test_ui_page_needs_the_key(client):
    page = client.get("/ui/")
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert 'name="key"' in page.text and 'action="/ui/auth"' in page.text
    api = client.get("/ui/gradio_api/info")
    assert api.status_code == 401 and api.json()["error"]["code"] == "invalid_api_key"
    wrong = client.post("/ui/auth", data={"key": "guess"}, follow_redirects=False)
    assert wrong.status_code == 401 and "is not the server" in wrong.text and COOKIE not in wrong.cookies

    right = client.post("/ui/auth", data={"key": KEY}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/ui/"
    cookie = right.headers["set-cookie"]
    assert KEY not in cookie and "HttpOnly" in cookie and "Path=/ui" in cookie and "samesite=strict" in cookie.lower()
    page = client.get("/ui/")
    assert page.status_code == 200 and "gradio" in page.text.lower() and "Adaptrix" in page.text
    assert client.get("/ui/gradio_api/info").status_code == 200
    assert client.get("/status").status_code == 401  # the UI's cookie opens /ui only


@needs_gradio
def test_ui_takes_the_bearer_header_and_a_forged_cookie_gets_nothing(client):
    assert client.get("/ui/", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    client.cookies.set(COOKIE, "0" * 64)
    assert client.get("/ui/").status_code == 401
    client.cookies.set(COOKIE, KEY)  # the key itself is not the cookie value either
    assert client.get("/ui/").status_code == 401


@needs_gradio
def test_ui_without_a_key_is_open_and_not_counted(engine):
    app = create_app(engine, ServerSettings())
    client = TestClient(app)  # no lifespan needed for the page
    page = client.get("/ui")  # redirected to /ui/
    assert page.status_code == 200 and "gradio" in page.text.lower()
    metrics = client.get("/metrics").text
    assert 'endpoint="/ui' not in metrics  # the page, its assets and polling are no requests of the API


@needs_gradio
def test_ui_uploads_are_bounded_by_the_upload_limit(engine):
    client = TestClient(create_app(engine, ServerSettings(max_upload_bytes=1000, max_request_bytes=500)))
    too_big = client.post("/ui/gradio_api/upload", files={"files": ("a.txt", b"x" * 5000, "text/plain")})
    assert too_big.status_code == 413
    fits = client.post("/ui/gradio_api/upload", files={"files": ("a.txt", b"x" * 600, "text/plain")})
    assert fits.status_code == 200  # over max_request_bytes, which bounds JSON bodies, within max_upload_bytes


def test_without_gradio_ui_says_how_to_install_it(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    client = TestClient(create_app(engine, ServerSettings()))
    for path in ("/ui", "/ui/"):
        page = client.get(path)
        assert page.status_code == 200 and "pip install 'adaptrix[ui]'" in page.text
    keyed = TestClient(create_app(engine, ServerSettings(api_key=KEY)))
    assert keyed.get("/ui").status_code == 401
    assert keyed.get("/ui", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_ui_can_be_turned_off(engine):
    client = TestClient(create_app(engine, ServerSettings(ui=False)))
    assert client.get("/ui/").status_code == 404 and client.get("/ui/auth").status_code == 404


# -- what the handlers do ------------------------------------------------------------------------------
def test_adapter_picker_entries():
    assert actions.parse_adapter_choice("base") is None and actions.parse_adapter_choice(" ") is None
    assert actions.parse_adapter_choice("auto") == "auto"
    assert actions.parse_adapter_choice("yes") == "yes"
    assert actions.parse_adapter_choice("yes, no") == ["yes", "no"]
    assert actions.parse_adapter_choice("yes=0.7, no=0.3") == {"yes": 0.7, "no": 0.3}
    for bad, word in (("yes=lots", "'lots'"), ("yes=inf", "finite")):
        with pytest.raises(InvalidGenerationParameterError, match=word):
            actions.parse_adapter_choice(bad)


def run(coroutine):
    return asyncio.run(coroutine)


async def streamed(state, messages, adapter, **options):
    """(pieces seen, QueryResult, ttft) of one request through the UI's path."""
    handle = await actions.submit(state, messages, adapter, **options)
    seen = [text async for _, text, error in actions.texts_of(state, [handle]) if text is not None and error is None]
    return seen, await actions.finish(state, handle), handle.ttft_ms


def test_answers_go_through_the_app_scheduler_and_metrics(app):
    state = app.state.adaptrix
    assert actions.adapter_choices(state) == ["auto", "base", "no", "yes"]
    client = TestClient(app, headers={"Authorization": f"Bearer {KEY}"})
    expected = client.post("/query", json={"prompt": "say gamma", "adapter": "yes", "temperature": 0,
                                           "max_new_tokens": 8}).json()["text"]
    seen, result, ttft = run(streamed(state, [{"role": "user", "content": "say gamma"}], "yes",
                                      max_new_tokens=8, temperature=0))
    assert seen and seen[-1] == result.text == expected and result.adapter_weights == {"yes": 1.0}
    title, details = actions.describe(result, ttft)
    assert title == "Answered by yes (1)" and "**Tokens:**" in details

    _, routed, ttft = run(streamed(state, [{"role": "user", "content": "please affirm: say gamma"}], "auto",
                                   max_new_tokens=4))
    title, details = actions.describe(routed, ttft)
    assert title.startswith("keyword router chose yes") and "chosen by the keyword router" in details

    _, mixed, _ = run(streamed(state, [{"role": "user", "content": "say eta"}], "yes=0.7,no=0.3",
                               max_new_tokens=4, temperature=0))
    assert mixed.adapter_weights == {"yes": 0.7, "no": 0.3}
    metrics = client.get("/metrics").text
    assert 'adaptrix_request_latency_seconds_count{endpoint="/ui"} 3.0' in metrics
    assert 'adaptrix_adapter_latency_seconds_count{adapter="yes"}' in metrics
    rows, points = actions.adapter_metrics(state.metrics)
    by_adapter = {row["adapter"]: row for row in rows}
    assert by_adapter["yes"]["requests"] >= 3 and by_adapter["no+yes"]["requests"] == 1
    assert all(0 < row["p50_ms"] <= row["p95_ms"] and row["tokens_per_s"] > 0 for row in rows)
    assert points and all(0 <= point["share"] <= 1 for point in points)


def test_bad_requests_are_typed_errors(app):
    state = app.state.adaptrix
    from adaptrix_core.errors import AdapterNotFoundError

    with pytest.raises(AdapterNotFoundError):
        run(actions.submit(state, [{"role": "user", "content": "hi"}], "nonexistent"))
    with pytest.raises(InvalidGenerationParameterError):
        run(actions.submit(state, [{"role": "user", "content": "hi"}], "yes=20"))


def test_other_tabs_answer_while_a_generation_runs(app):
    state = app.state.adaptrix

    async def scenario():
        handle = await actions.submit(state, [{"role": "user", "content": "tell a long story"}], "base",
                                      max_new_tokens=400, temperature=0)
        stream = actions.texts_of(state, [handle])
        await stream.__anext__()  # the first piece is out: the request is in the running batch
        status = dict(actions.status_rows(state))
        adapters = actions.adapter_rows(state)
        running = not handle.done
        await stream.aclose()  # leaving early cancels the request
        return status, adapters, running, handle

    status, adapters, running, handle = run(scenario())
    assert running and "queue_depth" in status and status["model.family"] == "llama"
    assert [row[0] for row in adapters] == ["no", "yes"]
    assert handle.cancelled
    assert state.metrics.registry.get_sample_value("adaptrix_cancelled_requests_total", {"endpoint": "/ui"}) == 1


def test_upload_through_the_ui_is_the_upload_endpoint(app, tmp_path):
    state = app.state.adaptrix
    notes = tmp_path / "notes.md"
    notes.write_text("# Canteen\n\nThe Quorvale canteen serves lunch from noon until two o'clock.\n")
    odd = tmp_path / "slides.pptx"
    odd.write_bytes(b"PK\x03\x04")
    rows = actions.ingest_paths(state, [str(notes), str(odd)])
    assert rows[0][:2] == ["notes.md", "added"] and rows[1][:2] == ["slides.pptx", "failed"]
    uploads = Path(state.engine.config.rag.data_dir).resolve() / "uploads"
    assert [p.suffix for p in uploads.iterdir()] == [".md"]
    assert [row[1] for row in actions.document_rows(state)] == [p.name for p in uploads.iterdir()]
    with pytest.raises(HTTPError, match="not a supported document type"):
        actions.ingest_paths(state, [str(odd)])
    assert len(list(uploads.iterdir())) == 1

    _, result, ttft = run(streamed(state, [{"role": "user", "content": "When does the canteen serve lunch?"}], "base",
                                   use_rag=True, max_new_tokens=4))
    title, details = actions.describe(result, ttft)
    assert result.sources and title.endswith("· 1 source") and "**[1]**" in details and "canteen serves lunch" in details


# -- a real browser ------------------------------------------------------------------------------------
CHROMIUM = find_chromium()


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-ui")
    model = tiny_model_dir("llama")
    with ModularAdaptrixEngine(str(model), device="cpu", adapters_dir=str(root / "adapters")) as engine:
        train_adapters(engine, only="yes")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "ADAPTRIX_MODEL__TORCH_THREADS": "1"}
    command = [sys.executable, "-m", "adaptrix_core.cli", "serve", "--port", str(port), "--model", str(model),
               "--device", "cpu", "--adapters-dir", str(root / "adapters"), "--data-dir", str(root / "index"),
               "--router", "keyword", "--api-key", KEY, "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    import httpx

    try:
        def get(path):
            if process.poll() is not None:
                raise AssertionError(f"adaptrix serve exited with status {process.returncode}")
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)

        def metric(name, labels):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
            line = next((line for line in text.splitlines() if line.startswith(name + labels + " ")), None)
            return float(line.split()[-1]) if line else None

        wait_until_healthy(get, timeout=180)
        yield {"url": f"http://127.0.0.1:{port}", "root": root, "metric": metric}
    finally:
        process.terminate()
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
        print(output[-4000:])


BOT_TEXTS = "[...document.querySelectorAll('#chat [data-testid=bot]')].map(e => e.textContent.trim())"


@pytest.mark.browser
@needs_gradio
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: apt-get install chromium (or set ADAPTRIX_CHROMIUM)")
def test_in_a_real_browser(served, tmp_path):
    screenshot = Path(os.environ.get("ADAPTRIX_UI_SCREENSHOT") or tmp_path / "ui.png")
    with Browser.start(CHROMIUM, tmp_path / "profile") as page:
        page.navigate(f"{served['url']}/ui")
        page.wait_for("!!document.querySelector('#key')", what="the key page")
        page.click("#key")
        page.type_text(KEY)
        page.press("Enter", 13)
        page.wait_for("!!document.querySelector('#prompt textarea')", 60, "the Gradio app")
        page.wait_for("document.querySelector('#adapter-picker input').value === 'auto'", 20, "the adapter list")

        # Pick an adapter, send a prompt: its answer streams in, with how it was made under it.
        page.click("#adapter-picker input")
        page.click('ul.options li[aria-label="yes"]')
        assert page.evaluate("document.querySelector('#adapter-picker input').value") == "yes"
        page.click("#prompt textarea")
        page.type_text("say alpha")
        page.click("#send")
        page.wait_for(f"{BOT_TEXTS}.some(t => t.includes('Answered by yes (1)'))", 30, "the first answer")
        assert page.evaluate(BOT_TEXTS)[0].startswith("yes")

        # 'auto': the keyword router picks the adapter and says so under the answer.
        page.click("#adapter-picker input")
        page.click('ul.options li[aria-label="auto"]')
        page.click("#prompt textarea")
        page.type_text("say affirm")
        page.press("Enter", 13)
        page.wait_for(f"{BOT_TEXTS}.some(t => t.includes('keyword router chose yes'))", 30, "the routed answer")
        time.sleep(0.5)  # the details box opens with an animation
        page.screenshot(screenshot)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Side by side: the base model's long answer arrives piece by piece next to the adapter's.
        page.click("button[role=tab]:nth-child(2)")
        page.wait_for("!!document.querySelector('#compare-prompt textarea')", what="the side-by-side tab")
        page.click('#compare-prompt textarea')
        page.type_text("say beta")
        page.evaluate("""window.seen = new Set(); setInterval(() => {
            const text = document.querySelector('#left-answer textarea').value; if (text) window.seen.add(text); }, 5)""")
        page.click("#compare")
        notes = "['#left-notes', '#right-notes'].map(s => document.querySelector(s).textContent)"
        page.wait_for(f"{notes}.every(t => t.includes('Tokens'))", 60, "both answers")
        left, right = page.evaluate(notes)
        assert "base model" in left and "yes (1)" in right
        assert page.evaluate("window.seen.size") >= 2  # more than one partial text: it streamed
        assert page.evaluate("document.querySelector('#right-answer textarea').value") == "yes"

        # Stop: a long answer of the base model is cut off, its request leaves the scheduler.
        page.click("button[role=tab]:nth-child(1)")
        page.evaluate("document.querySelector('#max-tokens input[type=number]').select()")
        page.type_text("480")
        page.press("Enter", 13)
        page.wait_for("document.querySelector('#max-tokens input[type=range]').value === '480'", 5, "480 tokens")
        page.click("#adapter-picker input")
        page.click('ul.options li[aria-label="base"]')
        page.click("#prompt textarea")
        page.type_text("tell a long story")
        page.click("#send")
        page.wait_for(f"{BOT_TEXTS}.length === 5 && {BOT_TEXTS}[4].length > 0", 30, "the long answer to start")
        page.click("#stop")
        deadline = time.monotonic() + 20
        while served["metric"]("adaptrix_cancelled_requests_total", '{endpoint="/ui"}') != 1.0:
            assert time.monotonic() < deadline, "the stopped request was not cancelled"
            time.sleep(0.1)
        assert not any("Answered by base" in text for text in page.evaluate(BOT_TEXTS))
