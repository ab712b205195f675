"""The server's ``/metrics`` (Prometheus) and the request log agree on what the server answered.

A tiny engine with its own request log serves a mix of requests (named adapters, the base model,
``auto``, a weighted mix, streams, completions, native ``/query``, an unknown adapter); then the
Prometheus counters and the log's rows are compared per adapter: requests, tokens, routed
decisions and engine-level failures.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from server_support import train_adapters, wait_until_healthy

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.monitoring import stats
from adaptrix_core.server import create_app

GREEDY = {"temperature": 0, "max_tokens": 5}


@pytest.fixture
def served(tiny_model_dir, tmp_path, single_torch_thread):
    log = tmp_path / "requests.sqlite"
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(tmp_path / "adapters"),
                                   config={"monitoring": {"path": str(log)}}, router="keyword")
    engine.initialize()
    train_adapters(engine)
    engine.monitor.log.flush()
    before = stats.load(log)  # None while nothing was logged
    trained = 0 if before is None else len(before[0])  # training's own requests, if any, are not the server's
    with TestClient(create_app(engine)) as client:
        wait_until_healthy(client.get)
        yield client, engine, log, trained
    engine.cleanup()


def samples(client: TestClient, metric: str) -> dict[tuple, float]:
    """Values of one Prometheus metric, keyed by its label values (sorted label names)."""
    values = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == metric:
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def test_metrics_and_request_log_agree(served):
    client, engine, log, trained = served
    chat = "/v1/chat/completions"
    for model in ("yes", "no", "yes"):
        assert client.post(chat, json={"model": model, "messages": [{"role": "user", "content": "say it"}],
                                       **GREEDY}).status_code == 200
    base_id = client.get("/v1/models").json()["data"][0]["id"]
    assert client.post("/v1/completions", json={"model": base_id, "prompt": "hello", **GREEDY}).status_code == 200
    streamed = client.post(chat, json={"model": "no", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                       **GREEDY})
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    routed = client.post("/query", json={"prompt": "I agree: say kappa", "adapter": "auto", "temperature": 0,
                                         "max_new_tokens": 5})
    assert routed.status_code == 200 and routed.json()["routing"]["router"] == "keyword"
    mixed = client.post("/query", json={"prompt": "say it", "adapter": {"yes": 0.5, "no": 0.5}, "temperature": 0,
                                        "max_new_tokens": 5})
    assert mixed.status_code == 200
    assert client.post("/query", json={"prompt": "hi", "adapter": "missing", "max_new_tokens": 3}).status_code == 404

    engine.monitor.log.flush()
    rows = [row for row in stats.load(log)[0] if row["source"] == "server"]
    assert len(stats.load(log)[0]) - trained == len(rows) == 8

    ok = [row for row in rows if not row["error_type"]]
    logged = {}
    for row in ok:
        label = "+".join(sorted(row["adapters"])) or "base"  # /metrics' label: the adapters used, or base
        count, prompt, completion = logged.get(label, (0, 0, 0))
        logged[label] = (count + 1, prompt + row["prompt_tokens"], completion + row["completion_tokens"])
    requests = samples(client, "adaptrix_adapter_requests_total")
    prompt_tokens = samples(client, "adaptrix_prompt_tokens_total")
    completion_tokens = samples(client, "adaptrix_completion_tokens_total")
    metered = {labels[0][1]: (int(value), int(prompt_tokens[labels]), int(completion_tokens[labels]))
               for labels, value in requests.items()}
    assert metered == logged
    assert metered["yes"][0] >= 2 and metered["no"][0] >= 2 and metered["base"][0] >= 1 and "no+yes" in metered

    routes = samples(client, "adaptrix_route_decisions_total")
    routed_rows = [row for row in ok if row["router"]]
    assert sum(routes.values()) == len(routed_rows) == 1
    assert (("router", "keyword"), ("selected", "+".join(sorted(routed_rows[0]["adapters"])) or "base")) in routes

    failures = [row["error_type"] for row in rows if row["error_type"]]
    assert failures == ["AdapterNotFoundError"]
    errors = samples(client, "adaptrix_request_errors_total")
    assert errors == {(("endpoint", "/query"), ("type", "not_found_error")): 1.0}
    latency_counts = samples(client, "adaptrix_request_latency_seconds_count")
    assert sum(latency_counts.values()) == len(ok)
