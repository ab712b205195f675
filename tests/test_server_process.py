"""A real ``adaptrix serve`` process on 127.0.0.1 (a free port), driven by the official ``openai`` client.

The server serves a tiny model with two trained adapters ('yes', 'no', with routing keywords), the
keyword router and an API key. The last test stops it with SIGTERM while a stream is running: the
stream finishes and the process exits with status 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from server_support import train_adapters, wait_until_healthy

from adaptrix_core import ModularAdaptrixEngine

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
UPLOAD_LIMIT = 200_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    model = tiny_model_dir("llama")
    with ModularAdaptrixEngine(str(model), device="cpu", adapters_dir=str(root / "adapters")) as engine:
        train_adapters(engine)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "ADAPTRIX_SERVER__MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
           "ADAPTRIX_MODEL__TORCH_THREADS": "1", "ADAPTRIX_RAG__MIN_SCORE": "0"}
    command = [sys.executable, "-m", "adaptrix_core.cli", "serve", "--port", str(port), "--model", str(model),
               "--device", "cpu", "--adapters-dir", str(root / "adapters"), "--data-dir", str(root / "index"),
               "--router", "keyword", "--api-key", KEY, "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    base_url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    try:
        def get(path: str):
            if process.poll() is not None:
                raise AssertionError(f"adaptrix serve exited with status {process.returncode}")
            return http.get(path)

        wait_until_healthy(get, timeout=180)
        yield {"process": process, "url": base_url, "http": http, "root": root,
               "client": openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=60)}
    finally:
        http.close()
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=30)[0]
        print(output[-4000:])


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server["client"]


@pytest.fixture(scope="module")
def base_id(client) -> str:
    return client.models.list().data[0].id


def chat(client, model: str, prompt: str, **options):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, max_tokens=options.pop("max_tokens", 8), **options)


def test_models_list(client, base_id):
    assert [model.id for model in client.models.list().data] == [base_id, "no", "yes", "auto"]
    assert base_id == "tiny-llama"


def test_chat_and_completions(client):
    answer = chat(client, "yes", "say alpha")
    assert answer.choices[0].message.content == "yes" and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens >= 1 and answer.usage.prompt_tokens > 2
    assert answer.model_extra["adaptrix"] == {"adapters": {"yes": 1.0}, "routing": None, "sources": []}
    completion = client.completions.create(model="no", prompt="say beta", temperature=0, max_tokens=8)
    assert completion.choices[0].text == "no" and completion.usage.total_tokens > completion.usage.prompt_tokens


def test_streaming_equals_non_streamed(client, base_id):
    for model in (base_id, "no"):
        plain = chat(client, model, "hello, say gamma", max_tokens=16).choices[0].message.content
        pieces = [chunk.choices[0].delta.content or "" for chunk in
                  chat(client, model, "hello, say gamma", max_tokens=16, stream=True) if chunk.choices]
        assert "".join(pieces) == plain and len(pieces) > 1
    stream = client.completions.create(model="yes", prompt="say delta", temperature=0, max_tokens=8, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == "yes"


def test_auto_routing(client):
    routed = chat(client, "auto", "I must deny this: say epsilon")
    assert routed.choices[0].message.content == "no"
    assert routed.model_extra["adaptrix"]["routing"]["router"] == "keyword"
    assert routed.model_extra["adaptrix"]["adapters"] == {"no": 1.0}


def test_errors_as_openai_exceptions(server, client):
    with pytest.raises(openai.NotFoundError) as missing:
        chat(client, "ghost", "hi")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        chat(client, "yes", "hi", n=2)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="yes", messages=[{"role": "user", "content": "hi"}], temperature=-1)
    assert "temperature" in bad.value.message
    intruder = openai.OpenAI(base_url=f"{server['url']}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.models.list()
    assert httpx.get(f"{server['url']}/health").status_code == 200  # no key needed


def test_concurrent_mixed_adapters_equal_single_requests(client, base_id):
    requests = [(model, f"{lead}say {word}") for model, lead, word in [
        ("yes", "", "alpha"), ("no", "", "beta"), (base_id, "", "gamma"), ("auto", "I agree, ", "delta"),
        ("no", "please ", "zeta"), (base_id, "tell me a story and ", "eta"), ("yes", "now ", "theta"),
        ("auto", "deny it: ", "iota"), (base_id, "hello ", "kappa"), ("yes", "", "lambda"),
    ]]

    def run(index: int) -> tuple[str, str]:
        model, prompt = requests[index]
        if index % 3 == 0:
            stream = chat(client, model, prompt, max_tokens=24, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices), "stream"
        answer = chat(client, model, prompt, max_tokens=24)
        return answer.choices[0].message.content, answer.choices[0].finish_reason

    alone = [run(i)[0] for i in range(len(requests))]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = [text for text, _ in pool.map(run, range(len(requests)))]
    assert together == alone
    assert alone[0] == "yes" and alone[1] == "no" and alone[3] == "yes" and len(set(alone)) > 3


def test_upload_then_rag_query(server, client, base_id):
    http = server["http"]
    files = [("file", ("../../policy.md", b"# Parking\n\nVisitors to Quorvale park on level minus two, bay 17.\n")),
             ("file", ("menu.txt", b"The Quorvale canteen serves soup on Fridays.\n"))]
    uploaded = http.post("/upload", files=files)
    assert uploaded.status_code == 200, uploaded.text
    results = uploaded.json()["files"]
    assert [r["status"] for r in results] == ["added", "added"] and results[0]["filename"] == "policy.md"
    assert not (server["root"].parent / "policy.md").exists() and not (server["root"] / "policy.md").exists()
    listed = http.get("/documents").json()["documents"]
    assert {d["id"] for d in listed} == {r["document"] for r in results}
    answer = client.chat.completions.create(model=base_id, temperature=0, max_tokens=8,
                                            messages=[{"role": "user", "content": "Where do visitors park?"}],
                                            extra_body={"use_rag": True, "rag_top_k": 1})
    assert answer.model_extra["adaptrix"]["sources"][0]["document"] == results[0]["document"]
    native = http.post("/query", json={"prompt": "What does the canteen serve on Fridays?", "use_rag": True,
                                       "top_k": 1, "temperature": 0, "max_new_tokens": 8}).json()
    assert native["sources"][0]["document"] == results[1]["document"]


def test_upload_size_limit(server):
    too_big = server["http"].post("/upload", files=[("file", ("big.txt", b"word " * (UPLOAD_LIMIT // 4)))])
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert server["http"].get("/health").status_code == 200


def test_disconnect_cancels_the_request(server):
    http = server["http"]
    body = {"model": "yes", "messages": [{"role": "user", "content": "say mu"}], "max_tokens": 480,
            "ignore_eos": True, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert sum(1 for line, _ in zip(lines, range(6)) if line.startswith("data:")) >= 3
    with pytest.raises(httpx.ReadTimeout):  # a plain request whose client gives up
        http.post("/query", json={"prompt": "say nu", "max_new_tokens": 480, "ignore_eos": True, "temperature": 0},
                  timeout=0.2)  # the tiny model makes 480 tokens in well under a second: give up early
    deadline = time.monotonic() + 10
    while http.get("/status").json()["batch_size"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/status").json()["batch_size"] == 0
    metrics = http.get("/metrics").text
    assert 'adaptrix_cancelled_requests_total{endpoint="/v1/chat/completions"} 1.0' in metrics
    assert 'adaptrix_cancelled_requests_total{endpoint="/query"} 1.0' in metrics


def test_metrics(server):
    text = server["http"].get("/metrics").text
    assert 'adaptrix_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'adaptrix_requests_total{endpoint="/v1/chat/completions",status="404"} 1.0' in text
    assert 'adaptrix_route_decisions_total{router="keyword",selected="no"}' in text
    assert 'adaptrix_completion_tokens_total{adapter="yes"}' in text and "adaptrix_batch_size" in text


def test_sigterm_drains_the_running_stream_then_exits_cleanly(server):
    process, http = server["process"], server["http"]
    body = {"model": "no", "messages": [{"role": "user", "content": "say nu"}], "max_tokens": 300, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    lines: list[str] = []
    started = threading.Event()

    def consume() -> None:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                lines.append(line)
                if len(lines) > 4:
                    started.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert started.wait(30)
    process.send_signal(signal.SIGTERM)
    reader.join(60)
    assert process.wait(60) == 0
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]" and '"completion_tokens": 300' in events[-2]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server['url']}/health")
