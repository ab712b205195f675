"""Every public entry point of ModularAdaptrixEngine works as the very first call on a fresh engine.

Each case builds a new engine on the tiny Llama model (adapter store and document index in the
test's temporary folder) and calls one method first: it returns a real result or raises the typed
error its arguments call for, never an AttributeError or TypeError from state that only another
method would have set up. A coverage test keeps the table complete: every method and property the
README and docs/ show (``engine.<name>``) and every public attribute of the class must have a case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adaptrix_core import ModularAdaptrixEngine, QueryResult
from adaptrix_core.errors import (
    AdapterNotFoundError,
    ConfigError,
    DocumentError,
    DocumentNotFoundError,
    InvalidGenerationParameterError,
    InvalidPromptError,
)
from adaptrix_core.types import CompatibilityReport

REPO = Path(__file__).resolve().parents[1]
SHORT = {"max_new_tokens": 3, "temperature": 0}
LABELLED = [{"prompt": "hello there", "label": "base"}, {"prompt": "what is two plus two", "label": "base"}]
EXAMPLES = [{"prompt": f"say {word}", "response": word} for word in ("one", "two", "three", "four")]


def expect(error: type[Exception], call: Callable[[ModularAdaptrixEngine], Any]) -> Callable:
    def check(engine: ModularAdaptrixEngine) -> None:
        with pytest.raises(error):
            call(engine)
    return check


def returns(kind: type | tuple, call: Callable[[ModularAdaptrixEngine], Any],
            test: Callable[[Any], bool] = lambda value: True) -> Callable:
    def check(engine: ModularAdaptrixEngine) -> None:
        value = call(engine)
        assert isinstance(value, kind), f"{value!r} is not a {kind}"
        assert test(value), value
    return check


def context_manager_first(engine: ModularAdaptrixEngine) -> None:
    with engine as entered:
        assert entered is engine and entered.get_model_info()["family"] == "llama"


FIRST_CALLS: dict[str, Callable[[ModularAdaptrixEngine], None]] = {
    # generation
    "generate": returns(str, lambda e: e.generate("Hello", **SHORT)),
    "query": returns(QueryResult, lambda e: e.query("Hello", **SHORT), lambda r: r.sources == [] and r.family == "llama"),
    "query(use_rag=True)": returns(QueryResult, lambda e: e.query("Hello", use_rag=True, **SHORT),
                                   lambda r: r.sources == []),
    "query(use_rag=True) bad argument": expect(InvalidGenerationParameterError,
                                               lambda e: e.query("Hello", use_rag=True, max_new_tokens=-1)),
    "query(use_rag=True, top_k=0)": expect(InvalidPromptError, lambda e: e.query("Hello", use_rag=True, top_k=0, **SHORT)),
    "chat": returns(str, lambda e: e.chat([{"role": "user", "content": "Hello"}], **SHORT)),
    "stream": returns(str, lambda e: "".join(e.stream("Hello", **SHORT))),
    "generate_batch": returns(list, lambda e: e.generate_batch(["Hello", "Hi"], **SHORT),
                              lambda texts: len(texts) == 2 and all(isinstance(t, str) for t in texts)),
    "evaluate": returns(dict, lambda e: e.evaluate(EXAMPLES[:2], max_new_tokens=2), lambda r: r["examples"] == 2),
    # model facts and lifecycle
    "get_model_info": returns(dict, lambda e: e.get_model_info(), lambda info: info["family"] == "llama"),
    "backend": returns(object, lambda e: e.backend, lambda backend: backend.name == "hf"),
    "family": returns(object, lambda e: e.family, lambda family: family.name == "llama"),
    "max_context": returns(int, lambda e: e.max_context, lambda n: n > 0),
    "embedder": returns(object, lambda e: e.embedder, lambda embedder: embedder.dimension == 384),
    "initialize": returns(ModularAdaptrixEngine, lambda e: e.initialize()),
    "cleanup": returns(type(None), lambda e: e.cleanup()),
    "with engine": context_manager_first,
    "reset_context": returns(type(None), lambda e: e.reset_context()),
    "context": returns(list, lambda e: e.context, lambda history: history == []),
    "check_adapter_compatibility": returns(CompatibilityReport, lambda e: e.check_adapter_compatibility(
        {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}), lambda report: report.compatible),
    # adapters
    "list_adapters": returns(list, lambda e: e.list_adapters(), lambda rows: rows == []),
    "active_adapters": returns(list, lambda e: e.active_adapters(), lambda names: names == []),
    "loaded_adapters": returns(list, lambda e: e.loaded_adapters(), lambda names: names == []),
    "memory_report": returns(dict, lambda e: e.memory_report(), lambda r: r["base_model_bytes"] > 0),
    "load_adapter": expect(AdapterNotFoundError, lambda e: e.load_adapter("missing")),
    "preload": expect(AdapterNotFoundError, lambda e: e.preload(["missing"])),
    "switch_adapter": expect(AdapterNotFoundError, lambda e: e.switch_adapter("missing")),
    "switch_adapter(None)": returns(list, lambda e: e.switch_adapter(None), lambda names: names == []),
    "unload_adapter": expect(AdapterNotFoundError, lambda e: e.unload_adapter("missing")),
    "create_adapter": returns(object, lambda e: e.create_adapter("fresh", rank=2), lambda meta: meta.name == "fresh"),
    "save_adapter": expect(AdapterNotFoundError, lambda e: e.save_adapter("missing")),
    "check_stored_adapter": expect(AdapterNotFoundError, lambda e: e.check_stored_adapter("missing")),
    "train_adapter": returns(object, lambda e: e.train_adapter("taught", EXAMPLES, epochs=1, batch_size=2, rank=2,
                                                             max_length=32), lambda meta: meta.name == "taught"),
    # routing
    "route": expect(ConfigError, lambda e: e.route("Hello")),  # no router configured
    "route(router=keyword)": returns(object, lambda e: e.route("Hello", router="keyword"),
                                     lambda decision: decision.selected == {}),
    "get_router": returns(object, lambda e: e.get_router("keyword"), lambda router: router.name == "keyword"),
    "routing_candidates": returns(list, lambda e: e.routing_candidates(), lambda cards: cards == []),
    "fit_router": returns(dict, lambda e: e.fit_router("classifier"), lambda r: r["labels"] == ["base"]),
    "evaluate_router": returns(dict, lambda e: e.evaluate_router(LABELLED, router="keyword"),
                               lambda r: r["examples"] == 2),
    # documents
    "add_documents": returns(object, lambda e: e.add_documents("Herons nest on the east bank."),
                             lambda report: len(report.added) == 1),
    "add_documents('')": expect(DocumentError, lambda e: e.add_documents("")),
    "retrieve": returns(list, lambda e: e.retrieve("herons"), lambda hits: hits == []),
    "list_documents": returns(list, lambda e: e.list_documents(), lambda docs: docs == []),
    "remove_document": expect(DocumentNotFoundError, lambda e: e.remove_document("missing")),
    "index_stats": returns(dict, lambda e: e.index_stats(), lambda stats: stats["documents"] == 0),
    "routing": returns(list, lambda e: e.routing.registered(), lambda names: "keyword" in names),
    "monitor": returns(str, lambda e: e.monitor.source, lambda source: source == "library"),
    "model_id": returns(str, lambda e: e.model_id, lambda model_id: model_id.endswith("tiny-llama")),
    "use_context_by_default": returns(bool, lambda e: e.use_context_by_default, lambda flag: flag is False),
    # adapters made elsewhere, the store object, the scheduler's seam
    "import_adapter": expect(AdapterNotFoundError, lambda e: e.import_adapter("/no/such/peft/folder", "elsewhere")),
    "adapter_manager": returns(object, lambda e: e.adapter_manager.names(), lambda names: names == []),
    "lock": returns(object, lambda e: e.lock, lambda lock: lock.acquire(blocking=False) and (lock.release() or True)),
    "prepare_request": returns(object, lambda e: e.prepare_request(prompt="Hello", **SHORT),
                               lambda prepared: prepared.choice.target is None),
    "finish_request": returns(QueryResult, lambda e: e.finish_request(e.prepare_request(prompt="Hi", **SHORT), "x", 3, 1,
                                                                      "stop"), lambda r: r.text == "x"),
    "release_request": returns(type(None), lambda e: e.release_request(e.prepare_request(prompt="Hi", **SHORT))),
    "record_failure": returns(type(None), lambda e: e.record_failure(ValueError("refused before it was prepared"), "server")),
    "adapter_available": returns(bool, lambda e: e.adapter_available(None), lambda available: available),
    "busy_adapters": returns(set, lambda e: e.busy_adapters(), lambda busy: busy == set()),
}


@pytest.fixture
def fresh_engine(tiny_model_dir, tmp_path) -> ModularAdaptrixEngine:
    return ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(tmp_path / "adapters"),
                                 config={"rag": {"data_dir": str(tmp_path / "rag")}})


@pytest.mark.parametrize("case", list(FIRST_CALLS))
def test_first_call_on_a_fresh_engine(case, fresh_engine, single_torch_thread):
    assert fresh_engine._loaded is None  # nothing loaded yet: this call is the first
    try:
        FIRST_CALLS[case](fresh_engine)
    except (AttributeError, TypeError) as exc:  # state another method should have set up
        pytest.fail(f"{case} as the first call raised {type(exc).__name__}: {exc}")


def test_the_table_covers_every_documented_and_public_entry_point():
    documented = set()
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        documented.update(re.findall(r"(?<![\w/])engine\.(?!py\b)([a-z_]+)", page.read_text(encoding="utf-8")))
    public = {name for name in dir(ModularAdaptrixEngine) if not name.startswith("_")}
    covered = {re.match(r"[a-z_]+", case).group(0) for case in FIRST_CALLS} | {"__enter__"}
    missing = sorted((documented | public) - covered)
    assert not missing, f"add a first-call case for: {', '.join(missing)}"
