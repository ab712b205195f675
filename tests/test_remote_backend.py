"""The ``remote`` backend through the public engine API, against a real HTTP server that answers like vLLM.

The contract tests assert the exact requests vLLM receives (paths, JSON fields, the LoRA load and
unload payloads of its documented API); the others cover routing, streaming, batches, adapters and
every error path. Client-level behaviour (retries, backoff, SSE parsing) is in test_remote_client.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_vllm import FakeVLLM, ServerThread, closed_port_url

from adaptrix_core.errors import (
    AdapterIncompatibleError,
    AdapterNotFoundError,
    BackendCapabilityError,
    ConfigError,
    EngineClosedError,
    RemoteBackendError,
    UpstreamUnavailableError,
)
from adaptrix_core.protocols import Capability

pytest_plugins = ["remote_support"]
pytestmark = pytest.mark.usefixtures("remote_plugin")

REPO = Path(__file__).resolve().parents[1]
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
DATE_PROMPT = "Convert this date to ISO format (YYYY-MM-DD): March 5, 2021"
EXTRACT_PROMPT = "Extract name, age, city and job as JSON: Ana Ruiz, 31, is a pilot in Quito."


def chat_body(model: str, content: str, stream: bool = False, **fields) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 512,
            "temperature": 0.7, "top_p": 0.9}
    body.update(fields)
    body["stream"] = stream
    return body


def test_entry_point_is_declared():
    section = (REPO / "pyproject.toml").read_text().split("[project.entry-points.adaptrix]")[1].split("\n[")[0]
    assert 'backend_remote = "adaptrix_plugins.backends.remote"' in section.splitlines()


def test_contract_chat_stream_and_lora_requests(upstream, fake, engine_for):
    engine = engine_for(upstream.url)
    with engine:
        assert engine.generate(DATE_PROMPT, adapter="dates", temperature=0, max_new_tokens=16, seed=3,
                               stop=["\n\n"]) == f"dates says: {DATE_PROMPT}"
        assert engine.generate("Hello", adapter=None) == f"{BASE} says: Hello"
        assert "".join(engine.stream("Hello", adapter="arithmetic", ignore_eos=True)) == "arithmetic says: Hello"
        engine.load_adapter("extraction")
        engine.unload_adapter("extraction")
    assert fake.calls() == [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", chat_body("dates", DATE_PROMPT, max_tokens=16, temperature=0.0, seed=3,
                                                   stop=["\n\n"])),
        ("POST", "/v1/chat/completions", chat_body(BASE, "Hello")),
        ("POST", "/v1/chat/completions", chat_body("arithmetic", "Hello", stream=True, ignore_eos=True)),
        ("GET", "/v1/models", None),  # is "extraction" there already (another gateway may have loaded it)?
        ("POST", "/v1/load_lora_adapter", {"lora_name": "extraction", "lora_path": "/adapters/extraction"}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "extraction"}),
    ]
    assert all(request["authorization"] is None for request in fake.requests)


def test_contract_plain_completions_and_system_prompt(upstream, fake, engine_for):
    plain = engine_for(upstream.url)
    plain.config.model.use_chat_template = False
    with plain:
        assert plain.generate("2+2=", adapter=None, max_new_tokens=4) == f"{BASE} says: 2+2="
    system = engine_for(upstream.url)
    system.config.model.system_prompt = "Answer briefly."
    with system:
        system.chat([{"role": "user", "content": "Hi"}], adapter="dates", temperature=0)
    assert fake.calls()[1] == ("POST", "/v1/completions", {"model": BASE, "prompt": "2+2=",
                                                           "max_tokens": 4, "temperature": 0.7, "top_p": 0.9,
                                                           "stream": False})
    assert fake.calls()[3][2]["messages"] == [{"role": "system", "content": "Answer briefly."},
                                              {"role": "user", "content": "Hi"}]


def test_named_base_auto_and_streaming_through_the_engine(upstream, fake, store, engine_for):
    with engine_for(upstream.url) as engine:
        routed = engine.query(DATE_PROMPT, adapter="auto")
        assert routed.text == f"dates says: {DATE_PROMPT}" and routed.adapters == ["dates"]
        assert routed.routing["router"] == "keyword" and routed.routing["selected"] == {"dates": 1.0}
        assert routed.backend == "remote" and routed.family == "llama" and routed.prompt_tokens == 7
        off_topic = engine.query("Tell me about the weather on Mars.", adapter="auto")
        assert off_topic.adapters == [] and off_topic.text.startswith(f"{BASE} says:")
        # a store adapter vLLM does not serve yet: routed to, registered, then answered by it
        extracted = engine.query(EXTRACT_PROMPT, adapter="auto")
        assert extracted.adapters == ["extraction"] and extracted.text == f"extraction says: {EXTRACT_PROMPT}"
        assert fake.loras["extraction"] == "/adapters/extraction"
        assert "".join(engine.stream("one two three", adapter="dates")) == "dates says: one two three"
        assert engine.generate("Name it.", adapter="arithmetic") == "arithmetic says: Name it."
        info = engine.get_model_info()
        assert (info["backend"], info["base_model"], info["max_context"]) == ("remote", BASE, 2048)


def test_batch_runs_concurrently_one_request_per_prompt(upstream, fake, engine_for):
    with engine_for(upstream.url) as engine:
        fake.delay = 0.4
        started = time.perf_counter()
        answers = engine.generate_batch(["a", "b", "c", "d"], adapters=["dates", None, "arithmetic", "dates"])
        elapsed = time.perf_counter() - started
    assert answers == ["dates says: a", f"{BASE} says: b", "arithmetic says: c", "dates says: d"]
    chats = sorted((body["model"], body["messages"][0]["content"]) for _, path, body in fake.calls() if "chat" in path)
    assert chats == [(BASE, "b"), ("arithmetic", "c"), ("dates", "a"), ("dates", "d")]
    assert elapsed < 1.4, f"4 requests of 0.4 s took {elapsed:.2f} s: they did not run concurrently"


def test_server_scheduler_overlaps_gateway_requests(upstream, fake, engine_for):
    from adaptrix_core.server.scheduler import Scheduler

    with engine_for(upstream.url) as engine:
        fake.delay = 0.3
        scheduler = Scheduler(engine, max_batch_size=3).start()
        try:
            handles = [scheduler.submit(prompt=f"q{i}", adapter=("dates", None, "arithmetic")[i % 3]) for i in range(6)]
            texts = [handle.result(timeout=30).text for handle in handles]
        finally:
            scheduler.stop()
        assert texts == [f"{('dates', BASE, 'arithmetic')[i % 3]} says: q{i}" for i in range(6)]
        assert fake.max_in_flight == 3  # overlapped up to max_batch_size, never more
        assert scheduler.batch_size == 0 and scheduler.queue_depth == 0


def test_engine_level_training_is_refused_on_remote(upstream, engine_for):
    with engine_for(upstream.url) as engine:
        with pytest.raises(BackendCapabilityError, match="training"):
            engine.create_adapter("fresh")
        with pytest.raises(BackendCapabilityError, match="training"):
            engine.train_adapter("fresh", [{"prompt": "a", "response": "b"}] * 4)


def test_weighted_mix_is_a_typed_error_on_vllm(upstream, fake, engine_for):
    with engine_for(upstream.url) as engine:
        assert Capability.LORA_COMPOSITION not in engine.backend.capabilities
        with pytest.raises(BackendCapabilityError, match="weighted adapter mixes.*router.top_k: 1"):
            engine.generate("hi", adapter={"dates": 0.7, "arithmetic": 0.3})
    assert not any("chat" in path for _, path, _ in fake.calls())


def test_weighted_mix_passes_through_to_an_adaptrix_upstream(engine_for):
    fake = FakeVLLM(loras={"dates": "dates", "arithmetic": "arithmetic"}, owned_by="adaptrix")
    with ServerThread(fake.app()) as server, engine_for(server.url) as engine:
        assert Capability.LORA_COMPOSITION in engine.backend.capabilities
        text = engine.generate("hi", adapter={"dates": 0.7, "arithmetic": 0.3})
    assert text == "mix(arithmetic=0.3,dates=0.7) says: hi"
    assert fake.calls()[-1][2] == chat_body("mix(arithmetic=0.3,dates=0.7)", "hi",
                                            adapter={"arithmetic": 0.3, "dates": 0.7})


def test_capabilities_and_adapter_listing(upstream, fake, store, engine_for):
    fake.loras["sql"] = "/adapters/sql"  # served by vLLM, unknown to the local store
    with engine_for(upstream.url) as engine:
        backend = engine.backend
        assert {Capability.LORA, Capability.STREAMING} <= backend.capabilities
        assert not backend.capabilities & {Capability.TRAINING, Capability.MODULE_TREE,
                                           Capability.MIXED_ADAPTER_BATCHES}
        assert backend.module_names() == [] and backend.memory_report() == {} and backend.layers_path is None
        rows = {row["name"]: row for row in backend.adapter_rows(engine.list_adapters(), [], [])}
    assert sorted(rows) == ["arithmetic", "dates", "extraction", "sql"]
    assert rows["dates"]["upstream"] and rows["dates"]["saved"] and "ISO" in rows["dates"]["description"]
    assert not rows["extraction"]["upstream"] and rows["extraction"]["saved"]
    assert rows["sql"]["upstream"] and not rows["sql"]["saved"] and rows["sql"]["description"] == ""


def test_training_and_saving_are_refused(upstream, store, engine_for):
    with engine_for(upstream.url) as engine:
        for call in (lambda: engine.backend.inject_lora("fresh", {}, None),
                     lambda: engine.backend.train_lora("x", [], {}),
                     lambda: engine.backend.save_lora("x", store, BASE)):
            with pytest.raises(BackendCapabilityError, match="backend='hf'"):
                call()


# -- errors -----------------------------------------------------------------------------------------------------
def test_unreachable_server_is_a_clear_error_at_initialize(engine_for):
    url = closed_port_url()
    engine = engine_for(url, retries=2)
    started = time.perf_counter()
    with pytest.raises(UpstreamUnavailableError, match="Cannot connect to the upstream server at .*after 3 tries") as caught:
        engine.initialize()
    assert caught.value.url == f"{url}/models" and caught.value.status is None
    assert time.perf_counter() - started < 5


def test_an_upstream_that_is_not_openai_compatible(engine_for):
    fake = FakeVLLM()
    fake.script.append((200, "<html>It works!</html>", {}))
    with ServerThread(fake.app()) as server:
        with pytest.raises(RemoteBackendError, match="not JSON.*OpenAI-compatible"):
            engine_for(server.url).initialize()


def test_unknown_adapter_and_vanished_model(upstream, fake, engine_for):
    with engine_for(upstream.url) as engine:
        with pytest.raises(AdapterNotFoundError, match="ghost"):
            engine.generate("hi", adapter="ghost")
        del fake.loras["dates"]  # gone from vLLM, but still in the gateway's fresh model list
        with pytest.raises(RemoteBackendError) as caught:
            engine.generate("hi", adapter="dates")
    assert caught.value.status == 404 and caught.value.upstream_message == "The model `dates` does not exist."
    assert caught.value.error_type == "NotFoundError" and "answered 404" in str(caught.value)


def test_lora_load_errors_leave_nothing_loaded(store, engine_for):
    fake = FakeVLLM(loras={"dates": "/adapters/dates"}, mounts={"/adapters": str(store)})
    # no path_map: the gateway sends its own path, which does not exist where vLLM runs
    with ServerThread(fake.app()) as server, engine_for(server.url, path_map={}) as engine:
        with pytest.raises(RemoteBackendError, match="No adapter found for .*plugins.remote.path_map") as caught:
            engine.load_adapter("extraction")
        assert caught.value.status == 404 and "extraction" not in engine.loaded_adapters()
        assert fake.calls()[-1] == ("POST", "/v1/load_lora_adapter",
                                    {"lora_name": "extraction", "lora_path": str((store / "extraction").resolve())})
        fake.loras["extraction"] = "/elsewhere"  # another client loaded the same name meanwhile
        with pytest.raises(RemoteBackendError, match="has already been loaded") as twice:
            engine.backend.inject_lora("extraction", {}, store / "extraction" / "adapter_model.safetensors")
        assert twice.value.status == 400 and twice.value.error_type == "InvalidUserInput"


def test_unload_of_an_adapter_already_gone_upstream(upstream, fake, engine_for):
    with engine_for(upstream.url) as engine:
        engine.load_adapter("extraction")
        del fake.loras["extraction"]
        engine.unload_adapter("extraction")  # vLLM answers 404: the adapter is gone, which is what was asked
        assert "extraction" not in engine.loaded_adapters()
        engine.load_adapter("dates")  # served by vLLM itself: never unloaded by the gateway
        engine.unload_adapter("dates")
    unloads = [body for _, path, body in fake.calls() if path.endswith("unload_lora_adapter")]
    assert unloads == [{"lora_name": "extraction"}] and "dates" in fake.loras


def test_adapter_for_another_base_model_is_refused_before_any_request(engine_for):
    fake = FakeVLLM(base_model="meta-llama/Llama-3.1-8B-Instruct")
    with ServerThread(fake.app()) as server, engine_for(server.url) as engine:
        with pytest.raises(AdapterIncompatibleError, match="SmolLM2-135M-Instruct.*Llama-3.1-8B"):
            engine.load_adapter("dates")
    assert not any(path.endswith("load_lora_adapter") for _, path, _ in fake.calls())


def test_error_in_the_middle_of_a_stream(upstream, fake, engine_for):
    with engine_for(upstream.url) as engine:
        fake.stream_error_after = 2
        pieces = []
        with pytest.raises(RemoteBackendError, match="failed during the stream: The engine died."):
            for piece in engine.stream("one two three", adapter="dates"):
                pieces.append(piece)
        assert pieces == ["dates", " says:"]
        fake.stream_error_after = None
        assert engine.generate("again", adapter="dates") == "dates says: again"  # the engine is usable


def test_closing_a_stream_early_disconnects_from_the_upstream(upstream, fake, engine_for):
    with engine_for(upstream.url) as engine:
        fake.word_delay = 0.1
        stream = engine.stream(" ".join(["word"] * 30), adapter="dates")
        assert next(stream) == "dates"
        stream.close()
        deadline = time.monotonic() + 5
        while fake.abandoned == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.abandoned == 1
        fake.word_delay = 0.0
        assert engine.generate("next", adapter="dates") == "dates says: next"  # the engine is free again


def test_slow_upstream_times_out(upstream, fake, engine_for):
    with engine_for(upstream.url, timeout=0.3) as engine:
        fake.delay = 1.5
        with pytest.raises(UpstreamUnavailableError, match=r"did not answer within 0.3 s \(plugins.remote.timeout\)"):
            engine.generate("hi", adapter=None)


def test_api_key_from_the_environment_or_the_settings(monkeypatch, engine_for):
    fake = FakeVLLM(api_key="sekret")
    with ServerThread(fake.app()) as server:
        monkeypatch.delenv("ADAPTRIX_REMOTE_API_KEY", raising=False)
        with pytest.raises(RemoteBackendError, match="answered 401: Unauthorized.*ADAPTRIX_REMOTE_API_KEY") as caught:
            engine_for(server.url).initialize()
        assert caught.value.status == 401
        monkeypatch.setenv("ADAPTRIX_REMOTE_API_KEY", "sekret")
        with engine_for(server.url) as engine:
            engine.generate("hi", adapter=None)
        monkeypatch.setenv("ADAPTRIX_REMOTE_API_KEY", "wrong")
        with engine_for(server.url, api_key="sekret") as engine:
            engine.generate("hi", adapter=None)
    assert [r["authorization"] for r in fake.requests[1:]] == ["Bearer sekret"] * 4


def test_bad_plugin_settings_are_config_errors(upstream, engine_for):
    with pytest.raises(ConfigError, match="plugins.remote.timeout"):
        engine_for(upstream.url, timeout=-1).initialize()
    with pytest.raises(ConfigError, match="plugins.remote.retry"):
        engine_for(upstream.url, retry=3).initialize()
    with pytest.raises(RemoteBackendError, match="plugins.remote.base_model is 'nope'"):
        engine_for(upstream.url, base_model="nope").initialize()


def test_closed_engine_refuses_work(upstream, engine_for):
    engine = engine_for(upstream.url).initialize()
    backend = engine.backend
    engine.cleanup()
    with pytest.raises(EngineClosedError):
        engine.generate("hi")
    with pytest.raises(EngineClosedError):
        backend.upstream_models()


def test_list_adapters_merges_the_upstream_models_with_the_store(upstream, fake, engine_for):
    fake.loras["upstream_only"] = "/elsewhere/upstream_only"
    with engine_for(upstream.url) as engine:
        rows = {row["name"]: row for row in engine.list_adapters()}
    assert {"dates", "arithmetic", "upstream_only"} <= set(rows)
    assert rows["dates"]["description"]  # the local store's metadata, what routers read
    assert "upstream_only" in rows
