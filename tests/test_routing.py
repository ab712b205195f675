"""Routers (keyword, semantic, classifier, hybrid, a third-party one) through the public engine."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adaptrix_core import ModularAdaptrixEngine, hookimpl
from adaptrix_core.cli import cli
from adaptrix_core.config import RouterSettings
from adaptrix_core.errors import ConfigError, InvalidGenerationParameterError
from adaptrix_core.plugins import get_plugin_manager, reload_plugins
from adaptrix_core.protocols import RoutingDecision
from adaptrix_core.routing.selection import AdapterCard, RouterResources, select
from adaptrix_plugins.routers.keyword import KeywordRouter

WEATHER = AdapterCard("weather", "Answers questions about the weather forecast, rain, temperature and wind.",
                      ("weather", "rain", "forecast", "temperature"),
                      ("Will it rain tomorrow?", "What is the forecast for the weekend?", "How windy is it today?",
                       "Is it going to be hot this afternoon?", "Should I take an umbrella today?"))
RECIPES = AdapterCard("recipes", "Suggests cooking recipes and explains how to prepare dishes.",
                      ("recipe", "cook", "bake", "ingredients", "temperature"),
                      ("How do I bake banana bread?", "Give me a recipe for tomato soup.", "What can I cook with eggs?",
                       "Which ingredients go into a lasagna?", "How long should I roast a chicken?"))
CARDS = [WEATHER, RECIPES]


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    from adaptrix_core.embeddings import get_embedder

    return RouterResources(get_embedder, tmp_path_factory.mktemp("routing"))


def test_select_thresholds_top_k_and_multi_ratio():
    settings = RouterSettings(top_k=2, multi_ratio=0.8)
    decision = select("x", {"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.5, "b": 0.5, "c": 0.5}, settings)
    assert decision.selected == {"a": round(0.9 / 1.7, 4), "b": round(0.8 / 1.7, 4)}
    only = select("x", {"a": 0.9, "b": 0.6}, {"a": 0.5, "b": 0.5}, settings)
    assert only.selected == {"a": 1.0}
    base = select("x", {"a": 0.4, "b": 0.1}, {"a": 0.5, "b": 0.5}, settings)
    assert base.selected == {} and "no adapter reached its threshold" in base.reason
    assert decision.details["thresholds"] == {"a": 0.5, "b": 0.5, "c": 0.5}


def test_keyword_router_tfidf_and_multi_selection():
    router = KeywordRouter(RouterSettings(threshold=0.6))
    rain = router.route("Will there be rain in the forecast?", CARDS)
    assert rain.selected == {"weather": 1.0} and rain.router == "keyword"
    # "temperature" is shared by both adapters, so it weighs less than a distinctive keyword.
    shared = router.route("What temperature?", CARDS)
    distinctive = router.route("What forecast?", CARDS)
    assert shared.scores["weather"] < distinctive.scores["weather"]
    both = router.route("Give me a recipe to bake bread if the weather forecast says rain", CARDS)
    assert set(both.selected) == {"weather", "recipes"}
    assert router.route("Who wrote Hamlet?", CARDS).selected == {}
    extra = KeywordRouter(RouterSettings(threshold=0.6, keywords={"recipes": ["hamlet", "wrote"]}))
    assert extra.route("Who wrote Hamlet?", CARDS).selected == {"recipes": 1.0}


def test_semantic_router_scores_calibrates_and_refreshes(resources):
    from adaptrix_plugins.routers.semantic import SemanticRouter

    router = SemanticRouter(RouterSettings(), resources)
    decision = router.route("Is it going to snow later this week?", CARDS)
    assert decision.selected == {"weather": 1.0}
    assert decision.scores["weather"] > decision.scores["recipes"]
    assert router.route("Who painted the Sistine Chapel ceiling?", CARDS).selected == {}
    examples = [(p, "weather") for p in WEATHER.example_prompts] + [(p, "recipes") for p in RECIPES.example_prompts]
    examples += [(p, "base") for p in ("Who wrote Hamlet?", "What is the capital of Peru?", "Tell me a joke.")]
    result = router.fit(examples, CARDS)
    state = json.loads((resources.state_dir / "semantic.json").read_text())
    assert state["thresholds"] == result["thresholds"] and set(result["thresholds"]) == {"weather", "recipes"}
    assert router.thresholds(CARDS) == result["thresholds"]
    changed = AdapterCard("weather", "Translates text into French.", (), ("Translate hello into French.",))
    # A changed adapter loses its calibrated threshold (until refitted) and gets fresh embeddings.
    assert router.thresholds([changed, RECIPES]) == {"weather": 0.45, "recipes": result["thresholds"]["recipes"]}
    assert router.route("Translate 'good night' into French", [changed, RECIPES]).scores["weather"] > 0.5


def test_classifier_router_fits_saves_and_reloads(resources):
    from adaptrix_plugins.routers.classifier import ClassifierRouter

    router = ClassifierRouter(RouterSettings(), resources)
    decision = router.route("Should I bring a raincoat this evening?", CARDS)  # fits itself on first use
    assert decision.selected == {"weather": 1.0}
    assert (resources.state_dir / "classifier.safetensors").is_file()
    saved = json.loads((resources.state_dir / "classifier.json").read_text())
    assert saved["labels"] == ["recipes", "weather", "base"]
    reloaded = ClassifierRouter(RouterSettings(), resources)
    again = reloaded.route("Should I bring a raincoat this evening?", CARDS)
    assert again.scores == pytest.approx(decision.scores, abs=1e-6)
    assert reloaded.route("What's the plot of Hamlet?", CARDS).selected == {}
    assert reloaded.route("How do I cook rice?", CARDS).selected == {"recipes": 1.0}


def test_hybrid_combines_members(resources):
    from adaptrix_plugins.routers.classifier import ClassifierRouter
    from adaptrix_plugins.routers.hybrid import HybridRouter
    from adaptrix_plugins.routers.semantic import SemanticRouter

    members = {"keyword": KeywordRouter, "semantic": SemanticRouter, "classifier": ClassifierRouter}
    settings = RouterSettings()
    hybrid_resources = RouterResources(resources.embedder_loader, resources.state_dir,
                                       make_router=lambda name: members[name](settings, hybrid_resources))
    router = HybridRouter(settings, hybrid_resources)
    decision = router.route("Is rain in the forecast for Saturday?", CARDS)
    assert decision.selected == {"weather": 1.0}
    assert set(decision.details["members"]) == {"keyword", "semantic", "classifier"}
    only_itself = RouterResources(resources.embedder_loader, resources.state_dir, make_router=hybrid_resources.make_router,
                                  options={"weights": {"hybrid": 1.0}})
    with pytest.raises(ConfigError):
        HybridRouter(settings, only_itself)
    wrong_type = RouterResources(resources.embedder_loader, resources.state_dir, make_router=hybrid_resources.make_router,
                                 options={"weights": "heavy"})
    with pytest.raises(ConfigError, match="plugins.hybrid.weights"):
        HybridRouter(settings, wrong_type)


# -- through the engine -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def routed(tiny_model_dir, tmp_path_factory, single_torch_thread):
    """A tiny engine with two trained adapters carrying routing metadata."""
    store = tmp_path_factory.mktemp("routed-store")
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(store), router="keyword")
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    engine.train_adapter("weather", [{"prompt": f"weather {w}", "response": "yes"} for w in words * 3], layers="all",
                         epochs=6, learning_rate=2e-2, eval_split=0.0, description=WEATHER.description,
                         keywords=list(WEATHER.keywords), example_prompts=list(WEATHER.example_prompts))
    engine.train_adapter("recipes", [{"prompt": f"recipe {w}", "response": "no"} for w in words * 3], layers="all",
                         epochs=6, learning_rate=2e-2, eval_split=0.0, description=RECIPES.description,
                         keywords=list(RECIPES.keywords), example_prompts=list(RECIPES.example_prompts))
    yield engine
    engine.cleanup()


def test_auto_routes_loads_and_reports(routed):
    result = routed.query("Will it rain? Check the forecast.", adapter="auto", temperature=0, max_new_tokens=3)
    assert result.adapters == ["weather"] and result.routing["router"] == "keyword"
    assert result.routing["selected"] == {"weather": 1.0} and set(result.routing["scores"]) == {"weather", "recipes"}
    assert result.text == routed.generate("Will it rain? Check the forecast.", adapter="weather", temperature=0, max_new_tokens=3)
    base = routed.query("Who wrote Hamlet?", adapter="auto", temperature=0, max_new_tokens=3)
    assert base.adapters == [] and base.routing["selected"] == {}
    both = routed.query("A recipe to bake bread when the forecast says rain", adapter="auto", temperature=0, max_new_tokens=3)
    assert set(both.adapters) == {"weather", "recipes"}
    batch = routed.generate_batch(["Will it rain? forecast", "Who wrote Hamlet?"], adapters=["auto", "auto"],
                                  temperature=0, max_new_tokens=3)
    assert batch == [routed.generate("Will it rain? forecast", adapter="weather", temperature=0, max_new_tokens=3),
                     routed.generate("Who wrote Hamlet?", adapter=None, temperature=0, max_new_tokens=3)]


def test_each_builtin_router_through_the_engine(routed):
    for name in ("keyword", "semantic", "classifier", "hybrid"):
        decision = routed.route("Should I take an umbrella, is rain forecast?", router=name)
        assert isinstance(decision, RoutingDecision) and decision.router == name
        assert decision.selected and max(decision.selected, key=decision.selected.get) == "weather", name


def test_router_evaluation_and_cli(routed, tmp_path):
    data = tmp_path / "labelled.jsonl"
    rows = [{"prompt": "Is rain forecast for tomorrow?", "label": "weather"},
            {"prompt": "Which ingredients do I need to bake a cake? Give me the recipe.", "label": "recipes"},
            {"prompt": "Who wrote Hamlet?", "label": "base"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = routed.evaluate_router(data, "keyword")
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0 and result["examples"] == 3
    assert result["confusion"]["weather"]["weather"] == 1 and result["latency_ms"]["p50"] < 50
    common = ["--model", routed.model_id, "--device", "cpu", "--adapters-dir", str(routed.adapter_manager.directory)]
    out = CliRunner().invoke(cli, ["router", "eval", "--data", str(data), "--router", "keyword", "--json", *common])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["results"][0]["accuracy"] == 1.0
    table = CliRunner().invoke(cli, ["router", "eval", "--data", str(data), "--router", "keyword", *common])
    assert "confusion" in table.output and "100.0%" in table.output
    fitted = CliRunner().invoke(cli, ["router", "fit", "--router", "semantic", "--json", *common])
    assert fitted.exit_code == 0, fitted.output
    assert set(json.loads(fitted.stdout)["thresholds"]) == {"weather", "recipes"}
    listed = CliRunner().invoke(cli, ["router", "list", "--json"])
    assert {r["name"] for r in json.loads(listed.stdout)["routers"]} >= {"keyword", "semantic", "classifier", "hybrid"}
    query = CliRunner().invoke(cli, ["query", "Is rain forecast?", "--adapter", "auto", "--router", "keyword",
                                     "--temperature", "0", "--max-new-tokens", "3", *common])
    assert query.exit_code == 0, query.output
    assert "routing (keyword): weather" in query.output


def test_routing_errors(tiny_model_dir, tmp_path):
    engine = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(tmp_path))
    with pytest.raises(InvalidGenerationParameterError, match="needs a router"):
        engine.generate("hi", adapter="auto")
    with pytest.raises(ConfigError, match="Router 'oracle' is not registered"):
        ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(tmp_path),
                              router="oracle").route("hi")
    empty = ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", adapters_dir=str(tmp_path), router="keyword")
    result = empty.query("hi", adapter="auto", temperature=0, max_new_tokens=2)
    assert result.adapters == [] and "no valid adapters" in result.routing["reason"]


class _LengthRouter:
    """A third-party router: long prompts go to 'recipes'."""

    name = "length"

    def __init__(self, settings, resources):
        self.settings = settings

    def route(self, prompt, candidates):
        scores = {card.name: (1.0 if (card.name == "recipes") == (len(prompt) > 20) else 0.0) for card in candidates}
        return select(self.name, scores, {card.name: 0.5 for card in candidates}, self.settings)


class _LengthPlugin:
    @hookimpl
    def register_routers(self, register):
        register("length", _LengthRouter)


def test_third_party_router_plugin(routed):
    manager = get_plugin_manager()
    manager.register(_LengthPlugin(), name="length_router")
    try:
        engine = ModularAdaptrixEngine(routed.model_id, device="cpu", adapters_dir=str(routed.adapter_manager.directory),
                                       router="length")
        result = engine.query("a prompt that is clearly longer than twenty characters", adapter="auto",
                              temperature=0, max_new_tokens=2)
        assert result.routing["router"] == "length" and result.adapters == ["recipes"]
        engine.cleanup()
    finally:
        reload_plugins()
