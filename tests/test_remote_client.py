"""The remote backend's HTTP client: retries and backoff, Retry-After, typed errors, SSE; URL model ids, paths.

Retries run against a real HTTP server (the fake vLLM of fake_vllm.py) with the waits recorded
instead of slept, so the schedule is checked exactly and the tests stay fast.
"""

from __future__ import annotations

import email.utils
import time

import pytest
from fake_vllm import FakeVLLM, ServerThread, closed_port_url, vllm_error

from adaptrix_core.errors import InvalidPromptError, ModelNotFoundError, RemoteBackendError, UpstreamUnavailableError
from adaptrix_core.models.source import resolve_model
from adaptrix_plugins.backends.remote.backend import RemoteBackend, estimate_tokens
from adaptrix_plugins.backends.remote.catalogue import map_path, parse_models
from adaptrix_plugins.backends.remote.client import RemoteClient, error_fields, iter_sse_data, retry_after
from adaptrix_plugins.backends.remote.settings import RemoteSettings

pytest_plugins = ["remote_support"]
pytestmark = pytest.mark.usefixtures("remote_plugin")

OVERLOADED = {"object": "error", "message": "Server overloaded, retry later.", "type": "ServiceUnavailableError",
              "param": None, "code": 503}


def client_for(url: str, **settings) -> tuple[RemoteClient, list[float]]:
    waits: list[float] = []
    return RemoteClient(url, RemoteSettings(**settings), sleep=waits.append), waits


@pytest.fixture
def fake_server():
    fake = FakeVLLM()
    with ServerThread(fake.app()) as server:
        yield fake, server


def test_503_and_429_are_retried_with_exponential_backoff_and_retry_after(fake_server):
    fake, server = fake_server
    fake.script += [(503, OVERLOADED, {"Retry-After": "2"}), (429, {"error": {"message": "slow down"}}, {}),
                    (429, {"error": {"message": "slow down"}}, {})]
    client, waits = client_for(server.url, retries=3, backoff=0.1)
    assert client.get_json("models")["data"][0]["id"] == fake.base_model
    assert waits == [2.0, 0.2, 0.4]  # Retry-After honoured, then 0.1 * 2**n
    assert len(fake.requests) == 4


def test_retries_are_bounded_and_the_last_answer_is_reported(fake_server):
    fake, server = fake_server
    fake.script += [(503, OVERLOADED, {})] * 5
    client, waits = client_for(server.url, retries=2, backoff=0.05, max_backoff=0.08)
    with pytest.raises(UpstreamUnavailableError, match=r"answered 503 \(after 3 tries\): Server overloaded") as caught:
        client.post_json("chat/completions", {"model": "m"})
    assert waits == [0.05, 0.08] and len(fake.requests) == 3
    error = caught.value
    assert (error.status, error.upstream_message, error.error_type, error.code) == (
        503, "Server overloaded, retry later.", "ServiceUnavailableError", 503)


def test_retry_after_longer_than_max_backoff_fails_at_once(fake_server):
    fake, server = fake_server
    fake.script.append((429, {"error": {"message": "quota"}}, {"Retry-After": "3600"}))
    client, waits = client_for(server.url, retries=5, max_backoff=10)
    with pytest.raises(UpstreamUnavailableError, match="answered 429: quota It asked to retry after 3600 s"):
        client.get_json("models")
    assert waits == [] and len(fake.requests) == 1


def test_client_errors_are_not_retried(fake_server):
    fake, server = fake_server
    fake.script.append((400, vllm_error("max_tokens must be at least 1", "BadRequestError", 400).body.decode(), {}))
    client, waits = client_for(server.url, retries=3)
    with pytest.raises(RemoteBackendError, match="answered 400: max_tokens must be at least 1") as caught:
        client.post_json("completions", {"model": "m", "max_tokens": 0})
    assert not isinstance(caught.value, UpstreamUnavailableError) and waits == [] and len(fake.requests) == 1


def test_refused_connections_are_retried_with_backoff():
    url = closed_port_url()
    client, waits = client_for(url, retries=3, backoff=0.05)
    with pytest.raises(UpstreamUnavailableError, match=f"Cannot connect to the upstream server at {url}/models .*after 4 tries"):
        client.get_json("models")
    assert waits == [0.05, 0.1, 0.2]


def test_refused_connections_through_the_engine_stay_fast(engine_for):
    engine = engine_for(closed_port_url(), retries=3, backoff=0.02)
    started = time.perf_counter()
    with pytest.raises(UpstreamUnavailableError):
        engine.initialize()
    assert time.perf_counter() - started < 3


def test_streamed_events_and_done(fake_server):
    _, server = fake_server
    client, _ = client_for(server.url)
    body = {"model": FakeVLLM().base_model, "messages": [{"role": "user", "content": "a b"}], "stream": True}
    events = list(client.post_stream("chat/completions", body))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == f"{body['model']} says: a b"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_sse_parser():
    lines = [": keep-alive", "data: {\"a\": 1}", "", "event: message", "data: first", "data:second\r", "",
             "data: [DONE]", "", "data: tail"]
    assert list(iter_sse_data(lines)) == ['{"a": 1}', "first\nsecond", "[DONE]", "tail"]


@pytest.mark.parametrize("body, expected", [
    ({"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "param": None, "code": 404},
     ("The model `x` does not exist.", "NotFoundError", 404)),
    ({"error": {"message": "bad key", "type": "authentication_error", "param": None, "code": "invalid_api_key"}},
     ("bad key", "authentication_error", "invalid_api_key")),
    ({"error": "Unauthorized"}, ("Unauthorized", None, None)),
    ({"detail": [{"loc": ["body", "model"], "msg": "field required"}]},
     ('[{"loc": ["body", "model"], "msg": "field required"}]', None, None)),
    ("<h1>Bad Gateway</h1>", ("<h1>Bad Gateway</h1>", None, None)),
    ("", ("(empty body)", None, None)),
])
def test_error_body_shapes(body, expected):
    assert error_fields(body) == expected


def test_retry_after_values():
    assert retry_after("7") == 7.0 and retry_after(" 0.5 ") == 0.5 and retry_after("-3") == 0.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after(later) <= 31


def test_path_map():
    mapping = {"/srv/adapters": "/adapters", "/srv/adapters/team": "/mnt/team/", "/": "/host"}
    assert map_path("/srv/adapters/dates", mapping) == "/adapters/dates"
    assert map_path("/srv/adapters/team/sql", mapping) == "/mnt/team/sql"  # the longest prefix wins
    assert map_path("/srv/adapters2/x", mapping) == "/host/srv/adapters2/x"  # whole path components only
    assert map_path("/srv/adapters", {"/srv/adapters/": "/adapters"}) == "/adapters"
    assert map_path("/data/x", {"/srv": "/a"}) == "/data/x"


def test_model_list_parsing():
    vllm = {"data": [{"id": "base", "parent": None, "root": "/models/base", "max_model_len": 4096, "owned_by": "vllm"},
                     {"id": "alias", "parent": None, "owned_by": "vllm"},
                     {"id": "sql", "parent": "base", "root": "/adapters/sql", "owned_by": "vllm"}]}
    models = parse_models(vllm, "u")
    assert (models.base, sorted(models.adapters), models.server, models.max_model_len) == ("base", ["sql"], "vllm", 4096)
    assert models.is_base_model("org/BASE") and models.is_base_model(None) and not models.is_base_model("other")
    adaptrix = {"data": [{"id": "tiny", "parent": None, "owned_by": "adaptrix"},
                         {"id": "yes", "parent": "tiny", "owned_by": "adaptrix"},
                         {"id": "auto", "parent": "tiny", "owned_by": "adaptrix"}]}
    assert sorted(parse_models(adaptrix, "u").adapters) == ["yes"] and parse_models(adaptrix, "u").is_adaptrix
    plain = {"data": [{"id": "gpt-x"}, {"id": "ft-1"}]}  # a server that gives no parents
    assert parse_models(plain, "u").base == "gpt-x" and list(parse_models(plain, "u").adapters) == ["ft-1"]
    for bad in ({"data": "x"}, [], {"data": [{"name": "x"}]}, {"data": []}):
        with pytest.raises(RemoteBackendError):
            parse_models(bad, "u")


def test_url_model_ids():
    source = resolve_model("http://127.0.0.1:8000/v1/")
    assert (source.kind, source.url, source.canonical_id) == ("url", "http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1")
    assert resolve_model("HTTPS://gpu-box:9000").url == "https://gpu-box:9000/v1"
    for bad in ("http://:80/v1", "http://h:port/v1", "http://h/v1?x=1", "http://user:pw@h/v1"):
        with pytest.raises(ModelNotFoundError, match="is not a server URL"):
            resolve_model(bad)


def test_render_chat_envelope_and_token_estimate():
    backend = RemoteBackend()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo wörld"}]
    rendered = backend.render_chat(messages, {"enable_thinking": False})
    assert backend._body(rendered, _params(), True, "x", False)["chat_template_kwargs"] == {"enable_thinking": False}
    assert backend.count_tokens(rendered) == estimate_tokens("Be brief.") + estimate_tokens("Héllo wörld") + 8
    assert backend.count_tokens("plain text, 24 bytes ok.") == 6 and estimate_tokens("") == 0
    with pytest.raises(InvalidPromptError, match="render_chat"):
        backend._body("not json", _params(), True, "x", False)


def _params():
    from adaptrix_core.types import SamplingParams

    return SamplingParams(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=None, stop=(), end_tokens=(),
                          max_context=2048)
