"""The shipped demo adapters on the real default model, and routing on the held-out routing set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.training.metrics import json_match

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "adapters"
TASKS = ("arithmetic", "extraction", "dates")
ROUTING_TARGETS = {"keyword": 0.80, "semantic": 0.90, "classifier": 0.95}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    state = tmp_path_factory.mktemp("router-state")
    config = {"adapters": {"directory": str(STORE)}, "router": {"name": "classifier", "state_dir": str(state)}}
    with ModularAdaptrixEngine(config=config) as engine:
        yield engine


def held_out(task: str, count: int = 3) -> list[dict[str, str]]:
    lines = (REPO / "data" / "demo" / task / "test.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:count]]


@pytest.mark.parametrize("task", TASKS)
def test_shipped_adapter_is_valid_and_beats_the_base_model(task):
    meta, config, _ = AdapterManager(STORE).validate(task)
    metrics = meta.performance_metrics
    assert metrics["eval_examples"] == 100
    assert metrics[metrics["metric"]] >= metrics[f"base_{metrics['metric']}"] + 0.20
    assert meta.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta.family == "llama"
    assert config["layers_to_transform"] == list(range(10, 20)) == meta.target_layers
    assert len(meta.routing.example_prompts) == 50 and meta.routing.keywords and meta.description


def test_dates_adapter_answers_in_iso_format(engine):
    prompt = "Convert this date to ISO format (YYYY-MM-DD): March 5, 2021"
    assert engine.generate(prompt, adapter="dates", temperature=0, max_new_tokens=16) == "2021-03-05"
    assert engine.generate(prompt, adapter=None, temperature=0, max_new_tokens=16) != "2021-03-05"


def test_extraction_adapter_returns_the_fields_as_json(engine):
    hits = [json_match(engine.generate(row["prompt"], adapter="extraction", temperature=0, max_new_tokens=48),
                       row["response"]) for row in held_out("extraction")]
    assert sum(hits) >= 2


def test_mixed_batch_of_shipped_adapters_equals_single_runs(engine):
    rows = [(task, row) for task in TASKS for row in held_out(task, 2)]
    adapters = [task for task, _ in rows] + [None]
    prompts = [row["prompt"] for _, row in rows] + ["What is the capital of France?"]
    singles = [engine.generate(p, adapter=a, temperature=0, max_new_tokens=40) for p, a in zip(prompts, adapters)]
    assert engine.generate_batch(prompts, adapters=adapters, temperature=0, max_new_tokens=40) == singles


@pytest.mark.parametrize("router", list(ROUTING_TARGETS))
def test_router_accuracy_on_the_held_out_routing_set(engine, router):
    result = engine.evaluate_router(REPO / "data" / "routing" / "test.jsonl", router)
    assert result["examples"] == 160
    assert result["accuracy"] >= ROUTING_TARGETS[router], result["confusion"]


def test_auto_routing_picks_the_task_adapter(engine):
    for task in TASKS:
        row = held_out(task, 1)[0]
        result = engine.query(row["prompt"], adapter="auto", temperature=0, max_new_tokens=48)
        assert result.routing["router"] == "classifier"
        assert result.adapters == [task], result.routing
    off_topic = engine.query("Who wrote the novel Moby-Dick?", adapter="auto", temperature=0, max_new_tokens=16)
    assert off_topic.adapters == []
