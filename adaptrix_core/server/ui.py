"""The web UI at ``/ui``: Gradio mounted into the FastAPI app (``mount_ui``), or an install hint.

Tabs: a chat with streamed answers and an adapter picker (``auto``, ``base``, each adapter, a
weighted mix typed as ``a=0.7,b=0.3``), with the adapters, routing decision and sources under each
answer; side by side (one prompt, two adapters); documents (upload into the RAG index); adapters
(load / unload); status and metrics (``GET /status`` and charts of the per-adapter Prometheus
metrics). Every handler is async and talks to the app's own scheduler and engine (see
``ui_actions``); Gradio's queue runs up to ``server.max_batch_size`` generations at once, and the
other tabs stay responsive meanwhile. Gradio is the optional extra ``adaptrix[ui]``: without it
``/ui`` answers a page that says how to install it. The API key is checked in front (``ui_auth``).
"""

from __future__ import annotations

import os
import warnings
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from adaptrix_core.server import ui_actions as actions
from adaptrix_core.server.ui_auth import UI_PATH
from adaptrix_core.server.ui_auth import router as auth_router

INSTALL_HINT = "pip install 'adaptrix[ui]'"
STATUS_HEADERS = ["setting", "value"]
METRIC_HEADERS = ["adapter", "requests", "mean_ms", "p50_ms", "p95_ms", "completion_tokens", "tokens_per_s"]
ADAPTER_HEADERS = ["name", "loaded", "rank", "layers", "description", "problem"]
# The details under an answer are a Gradio "thought", which scrolls past 7.5 lines: show them whole.
CSS = "#chat .content-preview {max-height: none !important} .adaptrix-answer textarea {font-size: 0.95rem}"


def mount_ui(app: FastAPI) -> None:
    """Mount the web UI at ``/ui`` on an app made by ``create_app`` (the install hint without Gradio)."""
    app.include_router(auth_router)  # before the mount, so /ui/auth is ours
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a local server
    # Gradio's queue uses a Starlette constant that newer Starlette renamed: one warning per message.
    warnings.filterwarnings("ignore", message=".*HTTP_422_UNPROCESSABLE_ENTITY.*", module="gradio")
    try:
        import gradio as gr
    except ImportError as exc:
        app.include_router(_hint_router(str(exc)))
        return
    state = app.state.adaptrix
    settings = state.settings
    blocks = build_blocks(state)
    blocks.queue(default_concurrency_limit=settings.max_batch_size, max_size=settings.max_queue)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: nothing from the web
                           font_mono=["ui-monospace", "monospace"])
    gr.mount_gradio_app(app, blocks, path=UI_PATH, footer_links=["settings"], show_error=True,
                        max_file_size=settings.max_upload_bytes, theme=theme, css=CSS, ssr_mode=False)


def _hint_router(reason: str) -> APIRouter:
    router = APIRouter()
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Adaptrix web UI</title></head>
<body style="font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem">
<h1>Adaptrix web UI</h1><p>The web UI needs Gradio, which is not installed with this server. Install it with</p>
<pre>{INSTALL_HINT}</pre><p>and restart <code>adaptrix serve</code>. The REST and OpenAI-compatible API work without it
(<a href="../docs">/docs</a>).</p><p style="color:#666">({reason.replace("<", "&lt;")})</p></body></html>"""

    @router.get(UI_PATH, include_in_schema=False)
    @router.get(UI_PATH + "/", include_in_schema=False)
    async def install_hint() -> HTMLResponse:
        return HTMLResponse(page)

    return router


def _user_error(exc: Exception) -> Exception:
    """A Gradio error with the plain message of a typed Adaptrix or HTTP error (other errors unchanged)."""
    import gradio as gr

    from adaptrix_core.errors import AdaptrixError
    from adaptrix_core.server.errors import HTTPError

    if isinstance(exc, HTTPError):
        return gr.Error(exc.message)
    if isinstance(exc, AdaptrixError):
        return gr.Error(str(exc))
    return exc


def _message(exc: Exception) -> str:
    error = _user_error(exc)
    return getattr(error, "message", None) or str(error) or type(error).__name__


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def build_blocks(state: Any) -> Any:
    """The Gradio ``Blocks`` of the UI for one app state (not mounted)."""
    import gradio as gr

    engine = state.engine
    with gr.Blocks(title="Adaptrix", analytics_enabled=False, delete_cache=(600, 3600)) as blocks:
        gr.Markdown("## Adaptrix\nOne small model, many LoRA adapters. API: [/docs](../docs) · "
                    "metrics: [/metrics](../metrics)")
        with gr.Tab("Chat"):
            conversation = gr.State([])
            with gr.Row():
                adapter = gr.Dropdown(label="Adapter", choices=[actions.BASE], value=actions.BASE,
                                      allow_custom_value=True, scale=3, elem_id="adapter-picker",
                                      info="auto (router), base, an adapter, or a mix: arithmetic=0.7,dates=0.3")
                use_rag = gr.Checkbox(label="Use documents (RAG)", value=False, scale=1, min_width=180)
                max_tokens = gr.Slider(8, 1024, value=256, step=8, label="Max new tokens", scale=2, elem_id="max-tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature", scale=2)
            chatbot = gr.Chatbot(label="Conversation", height=600, elem_id="chat")
            with gr.Row():
                prompt = gr.Textbox(placeholder="Ask something and press Enter", show_label=False, scale=6,
                                    elem_id="prompt", autofocus=True)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                stop = gr.Button("Stop", scale=1, elem_id="stop")
                clear = gr.Button("Clear", scale=1)

        with gr.Tab("Side by side"):
            with gr.Row():
                left_adapter = gr.Dropdown(label="Left", choices=[actions.BASE], value=actions.BASE,
                                           allow_custom_value=True, elem_id="left-adapter")
                right_adapter = gr.Dropdown(label="Right", choices=[actions.BASE], value=actions.BASE,
                                            allow_custom_value=True, elem_id="right-adapter")
            compare_prompt = gr.Textbox(label="Prompt (sent to both, with the Chat tab's settings)", lines=2,
                                        elem_id="compare-prompt")
            compare_button = gr.Button("Compare", variant="primary", elem_id="compare")
            with gr.Row():
                with gr.Column():
                    left_text = gr.Textbox(label="Left answer", lines=8, interactive=False,
                                           elem_classes="adaptrix-answer", elem_id="left-answer")
                    left_notes = gr.Markdown(elem_id="left-notes")
                with gr.Column():
                    right_text = gr.Textbox(label="Right answer", lines=8, interactive=False,
                                            elem_classes="adaptrix-answer", elem_id="right-answer")
                    right_notes = gr.Markdown(elem_id="right-notes")

        with gr.Tab("Documents") as documents_tab:
            files = gr.File(label="Documents for RAG", file_count="multiple", file_types=_suffixes())
            ingest = gr.Button("Add to the index", variant="primary")
            ingested = gr.Dataframe(headers=["file", "status", "document / error"], interactive=False,
                                    label="Upload results")
            documents = gr.Dataframe(headers=["id", "file", "chunks", "characters"], interactive=False,
                                     label="Indexed documents")

        with gr.Tab("Adapters") as adapters_tab:
            adapters = gr.Dataframe(headers=ADAPTER_HEADERS, interactive=False, label="Adapter store")
            with gr.Row():
                chosen = gr.Dropdown(label="Adapter", choices=[], allow_custom_value=False, scale=3)
                load = gr.Button("Load", variant="primary", scale=1)
                unload = gr.Button("Unload", scale=1)
            adapter_note = gr.Markdown()

        with gr.Tab("Status and metrics") as status_tab:
            refresh = gr.Button("Refresh")
            with gr.Row():
                latency_plot = gr.BarPlot(x="adapter", y="mean_ms", title="Mean latency per adapter (ms)",
                                          y_title="ms", y_lim=[0, None])
                speed_plot = gr.BarPlot(x="adapter", y="tokens_per_s", title="Throughput per adapter (tokens/s)",
                                        y_title="tokens/s", y_lim=[0, None])
            distribution = gr.LinePlot(x="le_ms", y="share", color="adapter", x_title="latency (ms)",
                                       y_title="share of requests", y_lim=[0, 1],
                                       title="Requests answered within a latency, per adapter")
            metric_table = gr.Dataframe(headers=METRIC_HEADERS, interactive=False, label="Per adapter")
            gr.Markdown("Since the server started, from its Prometheus metrics ([/metrics](../metrics)): p50 and p95 "
                        "are estimated from the latency histogram's buckets; tokens/s is completion tokens over "
                        "request time.")
            status_table = gr.Dataframe(headers=STATUS_HEADERS, interactive=False, label="GET /status")

        # -- handlers --------------------------------------------------------------------------------
        async def on_page_load():
            if not state.ready.is_set():
                return (gr.update(),) * 5
            choices = await run_in_threadpool(actions.adapter_choices, state)
            names = [c for c in choices if c not in (actions.AUTO, actions.BASE)]
            first = "auto" if actions.AUTO in choices else (names[0] if names else actions.BASE)
            rows = await run_in_threadpool(actions.adapter_rows, state)
            return (gr.update(choices=choices, value=first), gr.update(choices=choices),
                    gr.update(choices=choices, value=names[0] if names else actions.BASE),
                    gr.update(choices=names, value=names[0] if names else None), rows)

        async def chat(message, shown, history, picked, rag, limit, temp):
            message = (message or "").strip()
            if not message:
                raise gr.Error("Type a message first.")
            history = [*history, {"role": "user", "content": message}]
            shown = [*shown, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            try:
                handle = await actions.submit(state, history, picked, rag, limit, temp)
            except Exception as exc:
                raise _user_error(exc) from exc
            yield "", shown, history
            async with aclosing(actions.texts_of(state, [handle])) as texts:  # closed early: cancelled
                async for _, text, error in texts:
                    if error is not None:
                        raise _user_error(error) from error
                    if text is not None:
                        shown[-1] = {"role": "assistant", "content": text}
                        yield "", shown, history
            result = await actions.finish(state, handle)
            title, details = actions.describe(result, handle.ttft_ms)
            shown[-1] = {"role": "assistant", "content": result.text}
            shown.append({"role": "assistant", "content": details, "metadata": {"title": title}})
            yield "", shown, [*history, {"role": "assistant", "content": result.text}]

        async def compare(message, left, right, rag, limit, temp):
            message = (message or "").strip()
            if not message:
                raise gr.Error("Type a prompt first.")
            handles = []
            try:
                for picked in (left, right):
                    handles.append(await actions.submit(state, [{"role": "user", "content": message}], picked, rag,
                                                        limit, temp))
            except Exception as exc:
                for handle in handles:
                    handle.cancel()
                raise _user_error(exc) from exc
            texts, notes = ["", ""], ["", ""]
            yield texts[0], notes[0], texts[1], notes[1]
            async with aclosing(actions.texts_of(state, handles)) as updates:
                async for index, text, error in updates:
                    if error is not None:
                        notes[index] = f"**Error:** {_message(error)}"
                    elif text is None:
                        result = await actions.finish(state, handles[index])
                        texts[index] = result.text
                        notes[index] = actions.describe(result, handles[index].ttft_ms)[1]
                    else:
                        texts[index] = text
                    yield texts[0], notes[0], texts[1], notes[1]

        async def add_documents(paths):
            if not paths:
                raise gr.Error("Choose one or more files first.")
            try:
                rows = await run_in_threadpool(actions.ingest_paths, state, list(paths))
            except Exception as exc:
                raise _user_error(exc) from exc
            return rows, await run_in_threadpool(actions.document_rows, state), None

        async def list_documents():
            if not state.ready.is_set():
                return gr.update()
            return await run_in_threadpool(actions.document_rows, state)

        async def list_adapters():
            if not state.ready.is_set():
                return gr.update()
            return await run_in_threadpool(actions.adapter_rows, state)

        def adapter_action(verb: str):
            async def act(name):
                if not name:
                    raise gr.Error("Pick an adapter first.")
                try:
                    await run_in_threadpool(getattr(engine, f"{verb}_adapter"), name)
                except Exception as exc:
                    raise _user_error(exc) from exc
                rows = await run_in_threadpool(actions.adapter_rows, state)
                return rows, f"{verb.capitalize()}ed **{name}**. Loaded now: {', '.join(engine.loaded_adapters()) or 'none'}."
            return act

        async def refresh_status():
            try:
                state.require_ready()
            except Exception as exc:
                raise _user_error(exc) from exc
            rows, points = actions.adapter_metrics(state.metrics)
            summary = _frame(rows, METRIC_HEADERS)
            status = await run_in_threadpool(actions.status_rows, state)
            return (summary, summary, _frame(points, ["adapter", "le_ms", "share"]),
                    [[row[key] for key in METRIC_HEADERS] for row in rows], status)

        # -- wiring ----------------------------------------------------------------------------------
        blocks.load(on_page_load, outputs=[adapter, left_adapter, right_adapter, chosen, adapters])
        chat_inputs = [prompt, chatbot, conversation, adapter, use_rag, max_tokens, temperature]
        chat_outputs = [prompt, chatbot, conversation]
        submitted = prompt.submit(chat, chat_inputs, chat_outputs)
        clicked = send.click(chat, chat_inputs, chat_outputs)
        stop.click(None, cancels=[submitted, clicked])
        clear.click(lambda: ([], []), outputs=[chatbot, conversation], queue=False)
        compare_button.click(compare, [compare_prompt, left_adapter, right_adapter, use_rag, max_tokens, temperature],
                             [left_text, left_notes, right_text, right_notes])
        ingest.click(add_documents, [files], [ingested, documents, files])
        blocks.load(list_documents, outputs=[documents])
        documents_tab.select(list_documents, outputs=[documents])
        adapters_tab.select(list_adapters, outputs=[adapters])
        load.click(adapter_action("load"), [chosen], [adapters, adapter_note])
        unload.click(adapter_action("unload"), [chosen], [adapters, adapter_note])
        status_outputs = [latency_plot, speed_plot, distribution, metric_table, status_table]
        refresh.click(refresh_status, outputs=status_outputs)
        status_tab.select(refresh_status, outputs=status_outputs)
    return blocks


def _suffixes() -> list[str]:
    from adaptrix_core.rag.readers import SUFFIXES

    return sorted(SUFFIXES)
