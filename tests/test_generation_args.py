"""Generation arguments as a class: every entry point refuses bad values with a typed error, and every
accepted value samples without inf/NaN (tiny temperatures decode greedily, as in vLLM)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.config import GenerationSettings
from adaptrix_core.errors import InvalidGenerationParameterError, InvalidPromptError
from adaptrix_core.generation.params import GREEDY_TEMPERATURE, MAX_SEED, resolve_sampling
from adaptrix_core.models.families import detect_family
from adaptrix_core.registry import collect

SURROGATE = "\ud800"  # what Python makes of undecodable bytes (surrogateescape): cannot be encoded


@pytest.fixture(scope="module")
def engine(tiny_model_dir, single_torch_thread):
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu") as engine:
        yield engine


def _entry_points(engine):
    """Each public generation entry point as ``call(prompt, **gen)``."""
    return {
        "generate": lambda prompt, **gen: engine.generate(prompt, **gen),
        "query": lambda prompt, **gen: engine.query(prompt, **gen),
        "chat": lambda prompt, **gen: engine.chat([{"role": "user", "content": prompt}], **gen),
        "stream": lambda prompt, **gen: "".join(engine.stream(prompt, **gen)),
        "generate_batch": lambda prompt, **gen: engine.generate_batch(["fine", prompt], **gen),
    }


ENTRY_POINTS = ("generate", "query", "chat", "stream", "generate_batch")

BAD_ARGUMENTS = [
    ({"seed": -1}, "seed must be an integer from 0 to 2\\*\\*63 - 1"),
    ({"seed": 2**63}, "from 0 to 2\\*\\*63 - 1"),
    ({"seed": 2**64}, "from 0 to 2\\*\\*63 - 1"),
    ({"seed": 10**30}, "from 0 to 2\\*\\*63 - 1"),
    ({"seed": 1.0}, "seed must be an integer"),
    ({"seed": True}, "seed must be an integer"),
    ({"task_type": ["code"]}, "task_type must be a string"),
    ({"task_type": {"a": 1}}, "task_type must be a string"),
    ({"task_type": 3}, "task_type must be a string"),
    ({"stop": b"x"}, "stop must be"),
    ({"stop": [["x"]]}, "stop must be"),
    ({"stop": ["ok", 3]}, "stop must be"),
    ({"stop": ["fine", "x" + SURROGATE]}, "stop string 1 holds a character that cannot be encoded"),
    ({"max_new_tokens": 2.0}, "max_new_tokens must be an integer"),
    ({"max_new_tokens": "4"}, "max_new_tokens must be an integer"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
    ({"max_new_tokens": 10**30}, "at most 2147483647"),
    ({"max_new_tokens": -3}, "at least 1"),
    ({"top_p": "0.5"}, "top_p must be a number"),
    ({"top_p": [0.5]}, "top_p must be a number"),
    ({"top_p": 10**400}, "top_p must be finite"),
    ({"top_p": float("inf")}, "top_p must be finite"),
    ({"temperature": 10**400}, "temperature must be finite"),
    ({"temperature": -1e-45}, "temperature must be between"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"ignore_eos": 1}, "ignore_eos must be true or false"),
    ({"ignore_eos": "yes"}, "ignore_eos must be true or false"),
    ({"enable_thinking": "no"}, "enable_thinking must be true or false"),
    ({"enable_thinking": []}, "enable_thinking must be true or false"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("gen, message", BAD_ARGUMENTS, ids=[repr(g)[:40] for g, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_typed_errors_at_every_entry_point(engine, entry, gen, message):
    with pytest.raises(InvalidGenerationParameterError, match=message):
        _entry_points(engine)[entry]("hello", **{"max_new_tokens": 2, **gen})


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("text", ["hi " + SURROGATE, "\udcff", "a\udc80b"])
def test_unencodable_prompts_are_refused(engine, entry, text):
    with pytest.raises(InvalidPromptError, match="cannot be encoded as UTF-8"):
        _entry_points(engine)[entry](text, max_new_tokens=2)


def test_unencodable_chat_and_system_messages_are_refused(engine):
    with pytest.raises(InvalidPromptError, match=r"messages\[0\] \(system\)"):
        engine.chat([{"role": "system", "content": "be " + SURROGATE}, {"role": "user", "content": "hi"}])
    with pytest.raises(InvalidPromptError, match="role"):
        engine.chat([{"role": ["user"], "content": "hi"}])


def test_unencodable_configured_system_prompt_is_refused(tiny_model_dir):
    config = {"model": {"system_prompt": "You are " + SURROGATE}}
    with ModularAdaptrixEngine(str(tiny_model_dir("llama")), device="cpu", config=config) as engine:
        with pytest.raises(InvalidPromptError, match="model.system_prompt"):
            engine.generate("hi", max_new_tokens=2)
        with pytest.raises(InvalidPromptError, match="model.system_prompt"):
            engine.stream("hi", max_new_tokens=2)


@pytest.mark.parametrize("temperature", [5e-324, 1e-45, 1e-300, 1e-6, GREEDY_TEMPERATURE / 2])
def test_tiny_temperatures_decode_greedily(engine, temperature):
    greedy = engine.query("hello there", temperature=0, max_new_tokens=6)
    result = engine.query("hello there", temperature=temperature, seed=3, max_new_tokens=6)
    assert result.text == greedy.text
    assert result.generation["temperature"] == 0.0
    assert "".join(engine.stream("hello there", temperature=temperature, max_new_tokens=6)) == greedy.text
    assert engine.generate_batch(["hello there"], temperature=temperature, max_new_tokens=6) == [greedy.text]


@pytest.mark.parametrize("temperature, top_p", [(GREEDY_TEMPERATURE, 1.0), (1.0001e-5, 1e-300), (100.0, 1.0),
                                                (0.7, 5e-324), (1.0, 1e-9)])
def test_extreme_accepted_values_sample_reproducibly(engine, temperature, top_p):
    gen = {"temperature": temperature, "top_p": top_p, "max_new_tokens": 5, "seed": MAX_SEED}
    first = engine.generate("hello", **gen)
    assert engine.generate("hello", **gen) == first
    assert isinstance("".join(engine.stream("hello", **gen)), str)


def test_seed_bounds_are_accepted(engine):
    for seed in (0, MAX_SEED):
        engine.generate("hello", temperature=1.0, seed=seed, max_new_tokens=2)


def test_stop_strings_the_vocabulary_cannot_write_are_harmless(engine):
    # The tiny tokenizer has no byte fallback: transformers would raise ValueError for these.
    for stop in (["\U0001f600"], ["\x00"], ["漢字"], ["\uffff", "\U0001f600"]):
        assert isinstance(engine.generate("hello", stop=stop, max_new_tokens=3), str)
        assert isinstance("".join(engine.stream("hello", stop=stop, max_new_tokens=3)), str)
        assert len(engine.generate_batch(["hello", "hi"], stop=stop, max_new_tokens=3)) == 2


def test_none_means_default_for_flags(engine):
    assert isinstance(engine.generate("hello", ignore_eos=None, enable_thinking=None, max_new_tokens=2), str)


@pytest.fixture(scope="module")
def llama_family():
    registry = collect()
    return detect_family(registry.families, "llama", ("LlamaForCausalLM",), "tiny")


@settings(max_examples=200, deadline=None)
@given(temperature=st.floats(min_value=0, max_value=100), top_p=st.floats(min_value=0, max_value=1, exclude_min=True))
def test_sampling_math_stays_finite_for_every_accepted_value(llama_family, temperature, top_p):
    """The logits processors generate() applies, on float32 logits (generate casts to float32) spanning
    far more than real models produce, give a proper distribution for every accepted value."""
    params = resolve_sampling({"temperature": temperature, "top_p": top_p}, llama_family, GenerationSettings(), 512)
    if params.temperature == 0:
        assert temperature < GREEDY_TEMPERATURE
        return
    logits = torch.tensor([[3.0e4, -3.0e4, 0.0, 1e-30, 2.9e4, -float("inf")]], dtype=torch.float32)
    scores = TemperatureLogitsWarper(params.temperature)(None, logits)
    scores = TopPLogitsWarper(params.top_p)(None, scores)
    probabilities = torch.softmax(scores, dim=-1)
    assert torch.isfinite(probabilities).all()
    assert math.isclose(probabilities.sum().item(), 1.0, rel_tol=1e-5)
    torch.multinomial(probabilities, 1)
