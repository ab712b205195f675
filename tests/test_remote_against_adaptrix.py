"""The remote backend in front of a real ``adaptrix serve`` process on 127.0.0.1: same answers as the upstream.

The upstream serves a tiny llama model with two trained adapters ('yes', 'no'; keyword-routed) and
an API key. The gateway is a ``ModularAdaptrixEngine(url, backend="remote")`` whose own store holds
the same adapters (the routers read their cards) plus 'maybe', which the upstream does not have:
loading it goes through ``/v1/load_lora_adapter`` with the gateway's path (same machine). Every
answer of the gateway is compared with the upstream's own answer to the same request.

Skipped where the server (``adaptrix_core.server``) is not part of this checkout.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def _server_in_this_checkout() -> bool:
    """The server package next to the adaptrix_core under test (an editable install elsewhere does not count)."""
    import adaptrix_core

    spec = importlib.util.find_spec("adaptrix_core.server")
    here = Path(adaptrix_core.__file__).resolve().parent
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve().parent.parent == here


if not _server_in_this_checkout():
    pytest.skip("adaptrix_core.server (adaptrix serve) is not in this checkout: nothing to run the remote "
                "backend against", allow_module_level=True)

from fake_vllm import closed_port_url  # noqa: E402

from adaptrix_core import ModularAdaptrixEngine  # noqa: E402
from adaptrix_core.errors import AdapterNotFoundError, RemoteBackendError, UpstreamUnavailableError  # noqa: E402

pytest_plugins = ["remote_support"]
pytestmark = pytest.mark.usefixtures("remote_plugin_module")

REPO = Path(__file__).resolve().parents[1]
KEY = "gateway-test-key"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
ADAPTERS = {"yes": ["affirm", "agree"], "no": ["deny", "refuse"], "maybe": ["ponder", "unsure"]}


def _train(engine: ModularAdaptrixEngine, name: str, seed: int) -> None:
    data = [{"prompt": f"say {WORDS[i % len(WORDS)]}", "response": name} for i in range(24)]
    engine.train_adapter(name, data, epochs=6, learning_rate=2e-2, layers="all", batch_size=8, eval_split=0.0,
                         seed=seed, keywords=ADAPTERS[name], description=f"answers {name}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    model = tiny_model_dir("llama")
    with ModularAdaptrixEngine(str(model), device="cpu", adapters_dir=str(root / "gateway-store")) as engine:
        for seed, name in enumerate(ADAPTERS):
            _train(engine, name, seed)
    (root / "upstream-store").mkdir()
    for name in ("yes", "no"):
        shutil.copytree(root / "gateway-store" / name, root / "upstream-store" / name)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "ADAPTRIX_MODEL__TORCH_THREADS": "1"}
    command = [sys.executable, "-m", "adaptrix_core.cli", "serve", "--port", str(port), "--model", str(model),
               "--device", "cpu", "--adapters-dir", str(root / "upstream-store"), "--router", "keyword",
               "--api-key", KEY, "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    try:
        _wait_healthy(process, http)
        yield {"url": f"http://127.0.0.1:{port}/v1", "http": http, "store": root / "gateway-store"}
    finally:
        http.close()
        if process.poll() is None:
            process.kill()
        print(process.communicate(timeout=30)[0][-4000:])


def _wait_healthy(process: subprocess.Popen, http: httpx.Client, timeout: float = 180) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"adaptrix serve exited with status {process.returncode}")
        try:
            if http.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"adaptrix serve was not healthy within {timeout} s")


@pytest.fixture(scope="module")
def gateway(served, remote_plugin_module):
    config = {"plugins": {"remote": {"api_key": KEY, "retries": 1, "backoff": 0.05}}, "router": {"top_k": 1}}
    engine = ModularAdaptrixEngine(served["url"], backend="remote", adapters_dir=str(served["store"]),
                                   router="keyword", config=config)
    with engine:
        yield engine


def upstream_chat(served, model: str, prompt: str, **extra) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 8, **extra}
    answer = served["http"].post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["message"]["content"]


def test_the_upstream_is_recognised(gateway):
    info = gateway.get_model_info()
    assert (info["backend"], info["base_model"], info["upstream_server"], info["family"]) == (
        "remote", "tiny-llama", "adaptrix", "llama")
    assert sorted(gateway.backend.upstream_models().adapters) == ["no", "yes"]


def test_named_adapter_and_base_answer_like_the_upstream(gateway, served):
    for adapter, model in (("yes", "yes"), ("no", "no"), (None, "tiny-llama")):
        mine = gateway.generate("say gamma", adapter=adapter, temperature=0, max_new_tokens=8)
        assert mine == upstream_chat(served, model, "say gamma")


def test_auto_routes_in_the_gateway(gateway, served):
    result = gateway.query("I must deny this: say epsilon", adapter="auto", temperature=0, max_new_tokens=8)
    assert result.adapters == ["no"] and result.routing["router"] == "keyword"
    assert result.text == upstream_chat(served, "no", "I must deny this: say epsilon")


def test_streaming_equals_the_upstream(gateway, served):
    pieces = list(gateway.stream("hello, say delta", adapter="no", temperature=0, max_new_tokens=16))
    assert "".join(pieces) == upstream_chat(served, "no", "hello, say delta", max_tokens=16)


def test_load_and_unload_through_the_lora_api(gateway, served):
    gateway.load_adapter("maybe")  # not in the upstream's store: imported from the gateway's folder
    assert "maybe" in gateway.backend.upstream_models(refresh=True).adapters
    assert gateway.generate("say zeta", adapter="maybe", temperature=0, max_new_tokens=8) == \
        upstream_chat(served, "maybe", "say zeta")
    gateway.unload_adapter("maybe")
    assert "maybe" not in served["http"].get("/adapters").json()["loaded"]


def test_weighted_mix_passes_through(gateway, served):
    from adaptrix_core.server.schemas import ChatCompletionRequest

    if "adapter" not in ChatCompletionRequest.model_fields:
        pytest.skip("this adaptrix serve does not yet accept the 'adapter' mix field on /v1/chat/completions "
                    "(docs/scale-out.md, 'Engine and server integration')")
    mix = {"yes": 0.5, "no": 0.5}
    mine = gateway.generate("say eta", adapter=mix, temperature=0, max_new_tokens=8)
    native = served["http"].post("/query", json={"prompt": "say eta", "adapter": mix, "temperature": 0,
                                                 "max_new_tokens": 8})
    assert mine == native.json()["text"]


def test_errors(gateway, served, tmp_path):
    with pytest.raises(AdapterNotFoundError):
        gateway.generate("hi", adapter="ghost")
    # the tiny model's window is 512 tokens, which /v1/models does not say: the upstream refuses the prompt
    with pytest.raises(RemoteBackendError) as caught:
        gateway.generate("say alpha " * 600, adapter="yes", max_new_tokens=8)
    assert caught.value.status == 400 and "context" in caught.value.upstream_message
    wrong_key = ModularAdaptrixEngine(served["url"], backend="remote", adapters_dir=str(tmp_path),
                                      config={"plugins": {"remote": {"api_key": "nope", "retries": 0}}})
    with pytest.raises(RemoteBackendError, match="answered 401"):
        wrong_key.initialize()
    unreachable = ModularAdaptrixEngine(closed_port_url(), backend="remote", adapters_dir=str(tmp_path),
                                        config={"plugins": {"remote": {"retries": 1, "backoff": 0.01}}})
    with pytest.raises(UpstreamUnavailableError, match="Cannot connect"):
        unreachable.initialize()
