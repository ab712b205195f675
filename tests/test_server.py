"""The HTTP server through FastAPI's test client on a tiny model: every endpoint and every error shape.

One engine (tiny llama, two trained adapters 'yes' and 'no' with routing keywords, the keyword
router) serves one app for the whole module; a few tests build their own app on the same engine
(API key, tight queue, load failure). Uploads embed with the real bundled embedding model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_support import sse_events, streamed_text, train_adapters, wait_until_healthy

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.config import ServerSettings
from adaptrix_core.server import create_app

GREEDY = {"temperature": 0, "max_new_tokens": 6}
UPLOAD_LIMIT = 100_000
REQUEST_LIMIT = 50_000
HANDBOOK = (b"# Travel policy\n\nEmployees of Quorvale book trains for trips under four hours. "
            b"The travel desk answers on extension 4471.\n")
CANTEEN = b"The Quorvale canteen serves lunch from noon until two o'clock on weekdays.\n"


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory, single_torch_thread):
    root = tmp_path_factory.mktemp("server")
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(root / "adapters"),
                                   config={"rag": {"data_dir": str(root / "index"), "min_score": 0.0}},
                                   router="keyword")
    engine.initialize()
    train_adapters(engine)
    yield engine
    engine.cleanup()


@pytest.fixture(scope="module")
def client(engine):
    app = create_app(engine, ServerSettings(max_upload_bytes=UPLOAD_LIMIT, max_upload_files=4,
                                            max_request_bytes=REQUEST_LIMIT))
    with TestClient(app) as test_client:
        wait_until_healthy(test_client.get)
        yield test_client


@pytest.fixture(scope="module")
def base_id(client) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


def error_of(response, status: int, code: str | None = None) -> dict:
    """The OpenAI error object of ``response``, checked for status, shape and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# -- start-up ----------------------------------------------------------------------------------------
def test_health_is_503_until_the_model_is_loaded(engine):
    app = create_app(engine)
    unstarted = TestClient(app)  # no lifespan: the loader never ran
    response = unstarted.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "loading"
    error_of(unstarted.get("/status"), 503, "model_loading")
    with TestClient(app) as started:
        wait_until_healthy(started.get)
        assert started.get("/health").json()["status"] == "ok"


def test_on_ready_runs_once_loaded_before_requests_are_served(engine):
    app = create_app(engine)
    state, seen = app.state.adaptrix, []
    state.on_ready = lambda: seen.append((state.scheduler is not None, state.ready.is_set()))
    with TestClient(app) as started:
        wait_until_healthy(started.get)
    assert seen == [(True, False)]  # the scheduler exists, /health not yet 200


def test_serve_freezes_its_startup_heap():
    import subprocess
    import sys

    script = ("import gc; from adaptrix_core.cli.serve import freeze_startup_heap; kept = [[n] for n in range(1000)]; "
              "freeze_startup_heap(); assert gc.get_freeze_count() >= 1000, gc.get_freeze_count()")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    app = create_app(ModularAdaptrixEngine(str(tmp_path / "missing-model"), device="cpu"))
    with TestClient(app) as client:
        app.state.adaptrix._loader.join(60)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "missing-model" in health.json()["error"]
        assert "missing-model" in error_of(client.post("/query", json={"prompt": "hi"}), 503, "load_failed")["message"]


# -- native endpoints -------------------------------------------------------------------------------
def test_query_equals_the_engine_and_reports_how(client, engine):
    response = client.post("/query", json={"prompt": "say alpha", "adapter": "yes", **GREEDY})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == engine.query("say alpha", adapter="yes", **GREEDY).text == "yes"
    assert body["adapters"] == ["yes"] and body["adapter_weights"] == {"yes": 1.0} and body["routing"] is None
    assert body["completion_tokens"] >= 1 and body["prompt_tokens"] > 2 and body["finish_reason"] == "stop"
    assert body["ttft_ms"] > 0 and body["latency_ms"] >= body["ttft_ms"] and body["id"]
    base = client.post("/query", json={"prompt": "say alpha", "adapter": None, **GREEDY}).json()
    assert base["adapters"] == [] and base["text"] == engine.query("say alpha", adapter=None, **GREEDY).text


def test_query_mix_auto_and_stop(client):
    mix = client.post("/query", json={"prompt": "say beta", "adapter": {"yes": 0.7, "no": 0.3}, **GREEDY}).json()
    assert mix["adapter_weights"] == {"yes": 0.7, "no": 0.3}
    routed = client.post("/query", json={"prompt": "please deny: say gamma", "adapter": "auto", **GREEDY}).json()
    assert routed["adapters"] == ["no"] and routed["routing"]["router"] == "keyword" and routed["text"] == "no"
    stopped = client.post("/query", json={"prompt": "say alpha", "adapter": "yes", "stop": ["s"], **GREEDY}).json()
    assert stopped["text"] == "ye" and stopped["finish_reason"] == "stop"


@pytest.mark.parametrize("body, status, code", [
    ({"prompt": "hi", "adapter": "nope"}, 404, "adapter_not_found"),
    ({"prompt": "hi", "temperature": -1}, 400, "invalid_parameter"),
    ({"prompt": "hi", "max_new_tokens": 0}, 400, "invalid_parameter"),
    ({"prompt": "hi", "top_p": 2}, 400, "invalid_parameter"),
    ({"prompt": "hi", "adapter": {"yes": "lots"}}, 400, "invalid_request"),
    ({"prompt": "   "}, 400, "invalid_prompt"),
    ({"prompt": "hi " * 600}, 400, "context_length_exceeded"),
    ({"prompt": 5}, 400, "invalid_request"),
    ({"promt": "hi"}, 400, "invalid_request"),
    ({"prompt": "hi", "top_k": 0, "use_rag": True}, 400, "invalid_prompt"),
])
def test_query_errors(client, body, status, code):
    error_of(client.post("/query", json=body), status, code)


def test_malformed_and_non_json_bodies_are_400(client):
    assert "not valid JSON" in error_of(client.post("/query", content=b"{'prompt':",
                                                    headers={"content-type": "application/json"}), 400)["message"]
    error_of(client.post("/query", content=b"prompt=hi", headers={"content-type": "text/plain"}), 400)
    error_of(client.post("/v1/chat/completions", content=b"[1, 2]", headers={"content-type": "application/json"}), 400)


def test_oversized_json_bodies_are_413(client):
    error_of(client.post("/query", json={"prompt": "x" * REQUEST_LIMIT}), 413, "request_too_large")
    error_of(client.post("/v1/chat/completions", content=b"{" + b" " * REQUEST_LIMIT,
                         headers={"content-type": "application/json"}), 413, "request_too_large")
    assert client.post("/query", json={"prompt": "say alpha", **GREEDY}).status_code == 200


def test_unknown_endpoint_and_method(client):
    error_of(client.get("/no/such/thing"), 404)
    error_of(client.get("/query"), 405)


def test_adapters_list_load_unload(client):
    listing = client.get("/adapters").json()
    assert [row["name"] for row in listing["adapters"]] == ["no", "yes"]
    assert listing["adapters"][1]["description"] == "answers yes" and listing["adapters"][1]["problem"] is None
    loaded = client.post("/adapters/no/load").json()
    assert loaded["loaded"] == "no" and "no" in loaded["loaded_adapters"] and loaded["metadata"]["rank"] == 16
    assert client.post("/adapters/no/unload").json()["loaded_adapters"].count("no") == 0
    error_of(client.post("/adapters/no/unload"), 404, "adapter_not_found")
    error_of(client.post("/adapters/ghost/load"), 404, "adapter_not_found")
    error_of(client.post("/adapters/..bad/load"), 400)


def test_status_reports_model_memory_queue(client):
    status = client.get("/status").json()
    assert status["device"] == "cpu" and status["model"]["family"] == "llama"
    assert status["memory"]["process_rss_bytes"] > 0 and status["memory"]["base_model_bytes"] > 0
    assert status["queue_depth"] == 0 and status["batch_size"] == 0 and status["max_batch_size"] == 8
    assert status["router"] == "keyword" and isinstance(status["adapters"]["loaded"], list)


# -- OpenAI-compatible endpoints ------------------------------------------------------------------------
def test_models_list_base_adapters_and_auto(client, engine):
    data = client.get("/v1/models").json()
    ids = [model["id"] for model in data["data"]]
    assert data["object"] == "list" and ids == [engine.get_model_info()["base_model"], "no", "yes", "auto"]
    assert all(model["object"] == "model" and model["owned_by"] == "adaptrix" for model in data["data"])


def test_chat_completion_shape_and_text(client, engine, base_id):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "say delta"}]
    response = client.post("/v1/chat/completions", json={"model": "yes", "messages": messages, "max_tokens": 6,
                                                         "temperature": 0})
    body = response.json()
    assert response.status_code == 200 and body["object"] == "chat.completion" and body["model"] == "yes"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": engine.chat(messages, adapter="yes", **GREEDY)}
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] > 0
    assert body["adaptrix"] == {"adapters": {"yes": 1.0}, "routing": None, "sources": []}
    parts = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "say "}, {"type": "text", "text": "delta"}]}]
    same = client.post("/v1/chat/completions", json={"model": "yes", "messages": parts, "max_completion_tokens": 6,
                                                     "temperature": 0}).json()
    assert same["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]
    base = client.post("/v1/chat/completions", json={"model": base_id, "messages": messages, **GREEDY}).json()
    assert base["adaptrix"]["adapters"] == {}


@pytest.mark.parametrize("chat", [True, False])
def test_stream_equals_the_non_streamed_answer(client, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    request = {"model": "no", "temperature": 0, "max_tokens": 12, "stream_options": {"include_usage": True}}
    request.update({"messages": [{"role": "user", "content": "hello there, say zeta"}]} if chat else
                   {"prompt": "hello there, say zeta"})
    plain = client.post(path, json=request).json()
    expected = plain["choices"][0]["message"]["content"] if chat else plain["choices"][0]["text"]
    response = client.post(path, json={**request, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert streamed_text(chunks, chat) == expected
    assert len({chunk["id"] for chunk in chunks}) == 1
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["adaptrix"]["adapters"] == {"no": 1.0}
    assert finals[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_completions_and_auto_routing(client, engine):
    body = client.post("/v1/completions", json={"model": "auto", "prompt": ["I agree: say eta"], "max_tokens": 6,
                                                "temperature": 0}).json()
    direct = engine.query("I agree: say eta", adapter="yes", temperature=0, max_new_tokens=6).text
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == direct and direct.startswith("yes")
    assert body["adaptrix"]["adapters"] == {"yes": 1.0} and body["adaptrix"]["routing"]["router"] == "keyword"
    assert body["adaptrix"]["routing"]["selected"] == {"yes": 1.0}
    neutral = client.post("/v1/completions", json={"model": "auto", "prompt": "say eta", **GREEDY}).json()
    assert neutral["adaptrix"]["adapters"] == {} and neutral["adaptrix"]["routing"] is not None


@pytest.mark.parametrize("path, body, status, code, param", [
    ("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "model_not_found", "model"),
    ("/v1/chat/completions", {"model": "yes", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400,
     "unsupported_parameter", "n"),
    ("/v1/chat/completions", {"model": "yes", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400,
     "unsupported_parameter", "logprobs"),
    ("/v1/chat/completions", {"model": "yes", "messages": [{"role": "user", "content": "hi"}],
                              "presence_penalty": 0.5}, 400, "unsupported_parameter", "presence_penalty"),
    ("/v1/chat/completions", {"model": "yes", "messages": []}, 400, "invalid_prompt", None),
    ("/v1/chat/completions", {"model": "yes", "messages": [{"role": "tool", "content": "x"}]}, 400,
     "invalid_prompt", None),
    ("/v1/chat/completions", {"model": "yes", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, "invalid_prompt", "messages[0].content"),
    ("/v1/chat/completions", {"model": "yes", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
     400, "invalid_parameter", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request", "model"),
    ("/v1/completions", {"model": "yes", "prompt": ["a", "b"]}, 400, "invalid_prompt", "prompt"),
    ("/v1/completions", {"model": "yes", "prompt": "hi", "echo": True}, 400, "unsupported_parameter", "echo"),
    ("/v1/completions", {"model": "yes", "prompt": "hi", "temperature": "hot"}, 400, "invalid_request", "temperature"),
    ("/v1/completions", {"model": "nope", "prompt": "hi", "stream": True}, 404, "model_not_found", "model"),
])
def test_openai_errors(client, path, body, status, code, param):
    assert error_of(client.post(path, json=body), status, code)["param"] == param


def test_vllm_style_lora_load_and_unload(client, engine, tmp_path):
    exported = AdapterManager(engine.adapter_manager.directory).export("yes", tmp_path / "peft-yes")
    (exported / "adaptrix.json").unlink()  # a plain PEFT folder, as made by another tool
    loaded = client.post("/v1/load_lora_adapter", json={"lora_name": "yes-copy", "lora_path": str(exported)})
    assert loaded.status_code == 200 and loaded.json()["imported"] is True, loaded.text
    assert "yes-copy" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    answer = client.post("/v1/chat/completions", json={"model": "yes-copy", "max_tokens": 6, "temperature": 0,
                                                       "messages": [{"role": "user", "content": "say iota"}]}).json()
    assert answer["choices"][0]["message"]["content"] == "yes"
    error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "yes-copy", "lora_path": str(tmp_path)}), 400,
             "adapter_exists")
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "yes-copy"}).status_code == 200
    error_of(client.post("/v1/unload_lora_adapter", json={"lora_name": "yes-copy"}), 404, "adapter_not_found")
    assert client.post("/v1/load_lora_adapter", json={"lora_name": "yes-copy"}).json()["imported"] is False
    client.post("/v1/unload_lora_adapter", json={"lora_name": "yes-copy"})
    engine.adapter_manager.delete("yes-copy")


def test_lora_import_checks_leave_the_store_unchanged(client, engine, tmp_path):
    store = engine.adapter_manager
    before = store.names()
    error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "ghost", "lora_path": str(tmp_path / "none")}),
             404, "adapter_not_found")
    wrong = AdapterManager(store.directory).export("no", tmp_path / "peft-wrong")
    (wrong / "adaptrix.json").unlink()
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["layers_to_transform"] = [7, 9]  # the tiny model has 2 layers
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "wrong", "lora_path": str(wrong)}), 400,
             "adapter_incompatible")
    (wrong / "adapter_model.safetensors").write_bytes(b"not safetensors")
    error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "wrong", "lora_path": str(wrong)}), 400,
             "adapter_corrupt")
    error_of(client.post("/v1/load_lora_adapter", json={"lora_path": str(wrong)}), 400, "invalid_request")
    assert store.names() == before


# -- uploads, documents, RAG ----------------------------------------------------------------------------
def files(*items: tuple[str, bytes]) -> list:
    return [("file", (name, content, "application/octet-stream")) for name, content in items]


def test_upload_list_query_delete(client, engine):
    uploads = Path(engine.config.rag.data_dir).resolve() / "uploads"
    response = client.post("/upload", files=files(("handbook.md", HANDBOOK), ("canteen.txt", CANTEEN),
                                                   ("virus.exe", b"MZ...")))
    assert response.status_code == 200, response.text
    results = response.json()["files"]
    assert [(r["filename"], r["status"]) for r in results] == [("handbook.md", "added"), ("canteen.txt", "added"),
                                                               ("virus.exe", "failed")]
    assert results[2]["error"]["type"] == "unsupported_media_type"
    documents = client.get("/documents").json()["documents"]
    assert {d["id"] for d in documents} >= {results[0]["document"], results[1]["document"]}
    assert all(Path(d["source"]).parent == uploads for d in documents)
    again = client.post("/upload", files=files(("copy.md", HANDBOOK))).json()["files"][0]
    assert again["status"] == "unchanged" and again["document"] == results[0]["document"]
    answer = client.post("/query", json={"prompt": "Which extension does the travel desk answer on?",
                                         "use_rag": True, "top_k": 1, **GREEDY}).json()
    assert answer["sources"] and answer["sources"][0]["document"] == results[0]["document"]
    chat = client.post("/v1/chat/completions", json={
        "model": "yes", "use_rag": True, "rag_top_k": 1, **GREEDY,
        "messages": [{"role": "user", "content": "When does the canteen serve lunch?"}]}).json()
    assert chat["adaptrix"]["sources"][0]["document"] == results[1]["document"]
    removed = client.delete(f"/documents/{results[1]['document']}").json()["removed"]
    assert removed["id"] == results[1]["document"] and not Path(removed["source"]).exists()
    error_of(client.delete(f"/documents/{results[1]['document']}"), 404, "document_not_found")


def test_upload_names_are_never_paths(client, engine, tmp_path_factory):
    data_dir = Path(engine.config.rag.data_dir).resolve()
    outside = {p for p in data_dir.parent.rglob("*") if not p.is_relative_to(data_dir)}
    names = ["../../escape.md", "/etc/passwd.txt", "..\\..\\win.md", "a/../../b.md"]
    response = client.post("/upload", files=files(*[(name, b"Escape attempt number %d." % i)
                                                    for i, name in enumerate(names)]))
    assert response.status_code == 200, response.text
    assert [r["filename"] for r in response.json()["files"]] == ["escape.md", "passwd.txt", "win.md", "b.md"]
    assert {p for p in data_dir.parent.rglob("*") if not p.is_relative_to(data_dir)} == outside
    kept = [p.name for p in (data_dir / "uploads").iterdir()]
    assert all(len(name.split(".")[0]) == 32 and not name.startswith(".") for name in kept)


def test_upload_limits_and_types(client, engine):
    uploads = Path(engine.config.rag.data_dir).resolve() / "uploads"
    before = sorted(uploads.iterdir()) if uploads.exists() else []
    error_of(client.post("/upload", files=files(("big.txt", b"x" * (UPLOAD_LIMIT + 1)))), 413, "request_too_large")
    error_of(client.post("/upload", content=b"x" * 10, headers={"content-type": "multipart/form-data; boundary=b",
                                                                "content-length": str(UPLOAD_LIMIT * 5)}), 413)
    error_of(client.post("/upload", files=files(("a.docx", b"PK.."), ("b.bin", b"\0"))), 415, "unsupported_media_type")
    error_of(client.post("/upload", json={"file": "x"}), 415, "unsupported_media_type")
    error_of(client.post("/upload", files=files(("empty.txt", b"   "))), 400, "document_error")
    error_of(client.post("/upload", data={"note": "no file"}, files=[]), 415)
    error_of(client.post("/upload", files=files(*[(f"{i}.txt", b"x") for i in range(5)])), 400)
    assert (sorted(uploads.iterdir()) if uploads.exists() else []) == before


# -- settings, auth, queue, failures, metrics -----------------------------------------------------------
def test_server_settings_from_file_environment_and_flags(tmp_path):
    from click.testing import CliRunner

    from adaptrix_core.cli import cli
    from adaptrix_core.config import load_config

    config_file = tmp_path / "adaptrix.yaml"
    config_file.write_text("server:\n  port: 9000\n  api_key: from-file\n")
    assert load_config(config_file, environ={}).server.api_key == "from-file"
    server = load_config(config_file, environ={"ADAPTRIX_API_KEY": "from-env"}).server
    assert (server.api_key, server.port, server.host, server.max_upload_bytes) == ("from-env", 9000, "127.0.0.1",
                                                                                   25 * 2**20)
    refused = CliRunner().invoke(cli, ["serve", "--config", str(config_file), "--port", "70000"])
    assert refused.exit_code == 1 and "server.port" in refused.output


def test_api_key_guards_everything_but_health(engine):
    with TestClient(create_app(engine, ServerSettings(api_key="sesame"))) as client:
        wait_until_healthy(client.get)
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            error = error_of(client.get("/v1/models", headers=headers), 401, "invalid_api_key")
            assert error["type"] == "authentication_error"
        error_of(client.post("/query", content=b"{bad", headers={"content-type": "application/json"}), 401)
        assert client.get("/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_full_queue_is_429(engine):
    with TestClient(create_app(engine, ServerSettings(max_batch_size=1, max_queue=1))) as client:
        wait_until_healthy(client.get)
        scheduler = client.app.state.adaptrix.scheduler
        running = scheduler.submit(prompt="say alpha", max_new_tokens=400, ignore_eos=True, temperature=0)
        while scheduler.batch_size == 0:
            pass
        waiting = scheduler.submit(prompt="say beta", max_new_tokens=4, temperature=0)
        response = client.post("/query", json={"prompt": "say gamma", **GREEDY})
        assert error_of(response, 429, "queue_full")["type"] == "rate_limit_error"
        assert response.headers["retry-after"] == "1"
        running.cancel()
        assert waiting.result(timeout=30).completion_tokens >= 1


def test_unexpected_errors_are_500_without_internals(engine, monkeypatch):
    app = create_app(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until_healthy(client.get)
        monkeypatch.setattr(engine, "list_documents", lambda: 1 / 0)
        error = error_of(client.get("/documents"), 500, "internal_error")
        assert "incident" in error["message"] and "ZeroDivision" not in error["message"]
        assert client.get("/health").status_code == 200


def test_metrics_count_requests_tokens_adapters_routes(client):
    client.post("/query", json={"prompt": "I agree: say kappa", "adapter": "auto", **GREEDY})
    client.post("/query", json={"prompt": "hi", "temperature": -5})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in ('adaptrix_requests_total{endpoint="/query",status="200"}',
                 'adaptrix_request_errors_total{endpoint="/query",type="invalid_request_error"}',
                 'adaptrix_completion_tokens_total{adapter="yes"}', 'adaptrix_prompt_tokens_total{adapter="base"}',
                 'adaptrix_route_decisions_total{router="keyword",selected="yes"}',
                 'adaptrix_request_latency_seconds_count{endpoint="/query"}',
                 'adaptrix_time_to_first_token_seconds_bucket{endpoint="/v1/chat/completions",le="+Inf"}',
                 "adaptrix_queue_depth 0.0", "adaptrix_batch_size 0.0"):
        assert line in text, line
    assert 'endpoint="/health"' not in text
