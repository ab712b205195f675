"""Every built-in model family, end to end through the public engine, on tiny random-weight models.

One tiny model per supported architecture (``tests/tiny_models.py``) is loaded with
``ModularAdaptrixEngine(folder, device="cpu")`` and checked for: family detection and the facts of
``get_model_info()``; greedy generation that is deterministic and identical whether a prompt runs
alone, in a left-padded batch or as a stream; chat with a system message (folded into the first
user turn for Gemma, whose template rejects the system role); the family's generation defaults,
context window and task presets; Qwen3's thinking switch; and adapter compatibility checks
(fused Phi-3 projections, GPT-2's Conv1D names, and plain-language rejections).

All generation is greedy (``temperature=0``) with at most 8 new tokens unless a test is about the
defaults, and torch runs on one thread (see ``single_torch_thread``) so the file stays fast.
"""

from __future__ import annotations

import pytest
from tiny_models import KINDS, MAX_POSITIONS
from transformers import AutoTokenizer

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.errors import ContextOverflowError, InvalidGenerationParameterError

FAMILY = {
    "llama": "llama", "mistral": "llama",
    "qwen2": "qwen", "qwen2_moe": "qwen", "qwen3": "qwen", "qwen3_moe": "qwen",
    "phi": "phi", "phi3": "phi",
    "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma",
    "gpt2": "generic", "stablelm": "generic",
}
ARCHITECTURE = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
    "phi": "PhiForCausalLM", "phi3": "Phi3ForCausalLM", "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "gpt2": "GPT2LMHeadModel",
    "stablelm": "StableLmForCausalLM",
}
#: (max_new_tokens, temperature, top_p, max_context) each family's models are served with by default.
FAMILY_DEFAULTS = {
    "llama": (512, 0.7, 0.9, 8192),
    "qwen": (1024, 0.7, 0.9, 32768),
    "phi": (512, 0.7, 0.85, 2048),
    "gemma": (512, 0.7, 0.95, 8192),
    "generic": (512, 0.7, 0.9, 2048),
}
#: A LoRA target module that each tiny model has and its family accepts.
TARGET = {kind: "q_proj" for kind in KINDS} | {"phi3": "qkv_proj", "gpt2": "c_attn"}
TASK_PRESETS = {"code": (0.3, 0.95), "math": (0.1, 0.9), "creative": (0.9, 0.95)}
PROMPTS = ["Hi", "What is the capital of France?", "Write a Python function that adds two numbers, please, and explain it."]
GREEDY = {"temperature": 0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def engines(tiny_model_dir, single_torch_thread):
    """``kind -> engine`` on that kind's tiny model, each loaded once for the whole module."""
    loaded: dict[str, ModularAdaptrixEngine] = {}

    def engine_for(kind: str) -> ModularAdaptrixEngine:
        if kind not in loaded:
            loaded[kind] = ModularAdaptrixEngine(str(tiny_model_dir(kind)), device="cpu").initialize()
        return loaded[kind]

    yield engine_for
    for engine in loaded.values():
        engine.cleanup()


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def engine(engines, kind) -> ModularAdaptrixEngine:
    return engines(kind)


def kinds_of(*families: str) -> list[str]:
    return [kind for kind in KINDS if FAMILY[kind] in families]


# -- detection and model facts ------------------------------------------------------------------

def test_family_is_detected_from_the_config(engine, kind):
    info = engine.get_model_info()
    assert info["family"] == FAMILY[kind]
    assert engine.family.name == FAMILY[kind]
    assert info["model_type"] == kind
    assert info["architecture"] == ARCHITECTURE[kind]


def test_model_info_reports_the_tiny_model(engine, kind, tiny_model_dir):
    info = engine.get_model_info()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir(kind))
    assert info["num_layers"] == 2
    assert info["hidden_size"] == 32
    assert info["vocab_size"] == len(tokenizer)
    assert info["backend"] == "hf"
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert info["chat_template"] is True
    assert info["middle_layers"] == [0]
    assert info["num_parameters"] > 0
    assert info["model_id"] == str(tiny_model_dir(kind))
    assert info["max_context"] == min(FAMILY_DEFAULTS[FAMILY[kind]][3], MAX_POSITIONS[kind])


def test_layer_list_is_found(engine, kind):
    # GPT-2 keeps its blocks in transformer.h, which the generic family (layers_path=None) discovers.
    expected = "transformer.h" if kind == "gpt2" else "model.layers"
    assert engine.get_model_info()["layers_path"] == expected


# -- generation -----------------------------------------------------------------------------------

def test_greedy_generation_is_deterministic(engine):
    first = engine.query(PROMPTS[1], **GREEDY)
    second = engine.query(PROMPTS[1], **GREEDY)
    assert isinstance(first.text, str)
    assert first.text == second.text
    assert first.completion_tokens == second.completion_tokens
    assert 1 <= first.completion_tokens <= GREEDY["max_new_tokens"]
    assert engine.generate(PROMPTS[1], **GREEDY) == first.text


def test_left_padded_batch_equals_single_prompts(engine):
    singles = [engine.generate(prompt, **GREEDY) for prompt in PROMPTS]
    batch = engine.generate_batch(PROMPTS, **GREEDY)
    assert len(batch) == len(PROMPTS)
    assert all(isinstance(text, str) for text in batch)
    assert batch == singles


def test_stream_pieces_join_to_the_greedy_answer(engine):
    pieces = list(engine.stream(PROMPTS[2], **GREEDY))
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert "".join(pieces) == engine.generate(PROMPTS[2], **GREEDY)


def test_chat_with_a_single_user_turn_equals_generate(engine):
    answer = engine.chat([{"role": "user", "content": PROMPTS[1]}], **GREEDY)
    assert answer == engine.generate(PROMPTS[1], **GREEDY)


def test_chat_with_a_system_message(engine, kind):
    system, user = "Be brief.", PROMPTS[1]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    answer = engine.chat(messages, **GREEDY)
    assert isinstance(answer, str)
    assert engine.chat(messages, **GREEDY) == answer
    if FAMILY[kind] == "gemma":
        # The template rejects the system role, so the engine prepends it to the first user turn.
        folded = [{"role": "user", "content": f"{system}\n\n{user}"}]
        assert answer == engine.chat(folded, **GREEDY)


@pytest.mark.parametrize("kind", kinds_of("gemma"))
def test_gemma_templates_reject_a_system_role(kind, tiny_model_dir):
    """The tiny Gemma templates behave like the real ones, so the engine's folding is really needed."""
    from jinja2.exceptions import TemplateError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir(kind))
    with pytest.raises(TemplateError, match="System role not supported"):
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            tokenize=False, add_generation_prompt=True,
        )


def test_max_new_tokens_bounds_the_answer(engine, kind):
    result = engine.query(PROMPTS[0], temperature=0, max_new_tokens=3)
    assert result.completion_tokens <= 3
    assert result.generation["max_new_tokens"] == 3
    assert result.family == FAMILY[kind]
    assert result.prompt_tokens > 0
    assert result.finish_reason in ("stop", "length")
    if result.finish_reason == "length":
        assert result.completion_tokens == 3


# -- family defaults, context window, task presets -----------------------------------------------

def _prompt_of_length(engine, target_tokens: int) -> tuple[str, int, int]:
    """A prompt "a a a ..." whose templated form is at most ``target_tokens`` long (and less than one
    word shorter): the prompt, its length in tokens and the tokens one more word adds."""
    one = engine.query("a", temperature=0, max_new_tokens=1).prompt_tokens
    per_word = engine.query("a a", temperature=0, max_new_tokens=1).prompt_tokens - one
    assert per_word > 0
    words = 1 + (target_tokens - one) // per_word
    return " ".join(["a"] * words), one + (words - 1) * per_word, per_word


def test_family_defaults_apply_when_not_overridden(engine, kind):
    max_new_tokens, temperature, top_p, family_context = FAMILY_DEFAULTS[FAMILY[kind]]
    context = min(family_context, MAX_POSITIONS[kind])
    assert engine.max_context == context
    # A prompt that leaves at most 4 (+ one word) tokens of room keeps the default-length answer
    # short: the backend lowers max_new_tokens to what fits, while the reported setting stays the
    # family default.
    prompt, length, per_word = _prompt_of_length(engine, context - 4)
    assert context - 4 - per_word < length <= context - 4
    result = engine.query(prompt, seed=0)
    assert result.generation == {
        "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": 0, "stop": [],
    }
    assert result.prompt_tokens == length
    assert 1 <= result.completion_tokens <= context - length


def test_a_prompt_filling_the_context_is_refused(engine):
    context = engine.max_context
    prompt, length, _ = _prompt_of_length(engine, context + 8)
    assert length >= context
    with pytest.raises(ContextOverflowError, match=f"is {length} tokens long but the model's context window holds {context} tokens"):
        engine.query(prompt, temperature=0, max_new_tokens=1)


@pytest.mark.parametrize("task_type", sorted(TASK_PRESETS))
def test_task_presets(engine, task_type):
    temperature, top_p = TASK_PRESETS[task_type]
    result = engine.query(PROMPTS[0], task_type=task_type, max_new_tokens=2, seed=0)
    assert (result.generation["temperature"], result.generation["top_p"]) == (temperature, top_p)
    explicit = engine.query(PROMPTS[0], task_type=task_type, max_new_tokens=2, temperature=0)
    assert (explicit.generation["temperature"], explicit.generation["top_p"]) == (0.0, top_p)


def test_general_task_keeps_the_family_defaults(engine, kind):
    _, temperature, top_p, _ = FAMILY_DEFAULTS[FAMILY[kind]]
    result = engine.query(PROMPTS[0], task_type="general", max_new_tokens=2, seed=0)
    assert (result.generation["temperature"], result.generation["top_p"]) == (temperature, top_p)


def test_unknown_task_type_is_refused(engines):
    with pytest.raises(InvalidGenerationParameterError, match="Unknown task_type 'poetry'.*code"):
        engines("llama").query(PROMPTS[0], task_type="poetry", max_new_tokens=2)


# -- Qwen3 thinking switch ------------------------------------------------------------------------

EMPTY_THINK = "<think>\n\n</think>\n\n"


def _prompt_tokens(engine, **gen) -> int:
    return engine.query(PROMPTS[0], temperature=0, max_new_tokens=1, **gen).prompt_tokens


@pytest.mark.parametrize("kind", ["qwen3", "qwen3_moe"])
def test_qwen3_thinking_is_off_by_default_and_switchable(engines, kind, tiny_model_dir):
    engine = engines(kind)
    think_block = len(AutoTokenizer.from_pretrained(tiny_model_dir(kind))(EMPTY_THINK, add_special_tokens=False).input_ids)
    default, off, on = _prompt_tokens(engine), _prompt_tokens(engine, enable_thinking=False), _prompt_tokens(engine, enable_thinking=True)
    # Thinking off: the template closes an empty <think> block in the generation prompt.
    assert default == off == on + think_block

    with ModularAdaptrixEngine(str(tiny_model_dir(kind)), device="cpu", config={"model": {"enable_thinking": True}}) as thinking:
        assert _prompt_tokens(thinking) == on
        assert _prompt_tokens(thinking, enable_thinking=False) == off


def test_qwen3_rendered_prompt_ends_with_an_empty_think_block(engines):
    engine = engines("qwen3")
    messages = [{"role": "user", "content": "Hi"}]
    # The only test that looks at the rendered prompt (engine.prompts renders it): it pins the
    # exact text the thinking switch produces, which the token counts above only imply.
    assert engine.prompts.render(messages, {})[0].endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    assert engine.prompts.render(messages, {"enable_thinking": True})[0].endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("kind", ["qwen2", "llama", "gemma", "phi3", "gpt2"])
def test_thinking_flag_is_harmless_elsewhere(engines, kind):
    engine = engines(kind)
    assert _prompt_tokens(engine, enable_thinking=True) == _prompt_tokens(engine) == _prompt_tokens(engine, enable_thinking=False)


# -- adapter compatibility ------------------------------------------------------------------------

def test_family_target_is_accepted(engine, kind):
    report = engine.check_adapter_compatibility({"target_modules": [TARGET[kind]], "layers_to_transform": [0, 1]})
    assert report.compatible, report.problems
    assert report.problems == []
    assert report.family == FAMILY[kind]
    assert report.num_layers == 2
    assert any("no base model" in warning for warning in report.warnings)


@pytest.mark.parametrize(("kind", "targets"), [
    ("phi3", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    ("phi", ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]),
    ("gpt2", ["c_attn", "c_proj", "c_fc"]),
    ("stablelm", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("qwen2_moe", ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]),
    ("qwen3_moe", ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]),
    ("gemma2", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
])
def test_model_specific_projections_are_accepted(engines, kind, targets):
    report = engines(kind).check_adapter_compatibility({"target_modules": targets, "layers_to_transform": [0, 1]})
    assert report.compatible, report.problems


@pytest.mark.parametrize(("kind", "absent"), [("phi3", "q_proj"), ("phi3", "fc1"), ("phi", "qkv_proj"), ("phi", "gate_up_proj")])
def test_family_projection_missing_from_this_variant_is_rejected(engines, kind, absent):
    """Phi and Phi-3 share a family but not module names: only those the model has are accepted."""
    report = engines(kind).check_adapter_compatibility({"target_modules": [absent]})
    assert not report.compatible
    assert report.problems == [f"Target module {absent!r} belongs to the phi family but this model has none."]


def _assert_plain(problems: list[str]) -> None:
    for problem in problems:
        assert problem.endswith(".") and "Traceback" not in problem and "\n" not in problem


def test_unknown_module_is_rejected(engine, kind):
    report = engine.check_adapter_compatibility({"target_modules": [TARGET[kind], "foo_proj"]})
    assert not report.compatible
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"Target module 'foo_proj' is not a projection of the {FAMILY[kind]} family (known: ")
    _assert_plain(report.problems)


def test_out_of_range_layer_is_rejected(engine, kind):
    report = engine.check_adapter_compatibility({"target_modules": [TARGET[kind]], "layers_to_transform": [0, 2, -1]})
    assert not report.compatible
    assert report.problems == ["Layer indices [2, -1] are out of range: this model has layers 0..1."]


def test_adapter_of_another_family_is_rejected(engine, kind):
    other = "gemma" if FAMILY[kind] != "gemma" else "llama"
    report = engine.check_adapter_compatibility({"target_modules": [TARGET[kind]], "adaptrix": {"family": other}})
    assert not report.compatible
    assert report.problems == [f"The adapter was made for the {other} family; this model is {FAMILY[kind]}."]


def test_adapter_of_another_base_model_is_rejected(engine, kind):
    report = engine.check_adapter_compatibility(
        {"target_modules": [TARGET[kind]], "base_model_name_or_path": "SomeOrg/Other-Model-1B"}
    )
    assert not report.compatible
    assert len(report.problems) == 1
    assert report.problems[0].startswith("The adapter was trained on base model 'SomeOrg/Other-Model-1B'; this engine serves ")
    assert f"tiny-{kind}" in report.problems[0]
    _assert_plain(report.problems)


def test_adapter_of_the_same_base_model_is_accepted(engine, kind, tiny_model_dir):
    for base in (f"tiny-{kind}", str(tiny_model_dir(kind)), f"someone/tiny-{kind}"):
        report = engine.check_adapter_compatibility({"target_modules": [TARGET[kind]], "base_model_name_or_path": base})
        assert report.compatible, (base, report.problems)
        assert report.warnings == []


def test_adapter_folder_metadata_is_checked(engines, tmp_path):
    """An adapter folder's adaptrix.json (family, target layers) is read along with adapter_config.json."""
    import json

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["c_attn"]}))
    (tmp_path / "adaptrix.json").write_text(json.dumps({"family": "qwen", "target_layers": [1, 7]}))
    report = engines("gpt2").check_adapter_compatibility(tmp_path)
    assert not report.compatible
    assert report.problems == [
        "Layer indices [7] are out of range: this model has layers 0..1.",
        "The adapter was made for the qwen family; this model is generic.",
    ]


#: Tiny models with fewer K/V heads than query heads, ``sdpa`` attention and transformers' attention
#: interface (StableLM's attention does not use it; the tiny Qwen2-MoE has as many K/V heads as heads).
GROUPED_SDPA = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "phi", "phi3", "gemma", "gemma2", "gemma3_text"}


def test_grouped_query_models_use_the_unexpanded_kv_attention_on_cpu(engine, kind):
    attention = engine.get_model_info()["attention"]
    assert (attention == "adaptrix_sdpa_gqa") == (kind in GROUPED_SDPA)
