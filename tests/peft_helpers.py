"""Helpers for adapter tests: LoRA folders made with plain peft, other-weight model copies, base digests."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from adaptrix_core import ModularAdaptrixEngine

PROMPTS = ("hello", "What is the capital of France?", "def add(a, b):")
GREEDY = {"temperature": 0, "max_new_tokens": 6}


def make_peft_adapter(model_dir: Path, out: Path, seed: int = 0, **options: Any) -> Path:
    """Train-free LoRA made with plain peft on the model in ``model_dir`` (random, nonzero A and B), saved to ``out``.

    ``options`` go to ``LoraConfig`` (default: r=4 on q_proj/v_proj of every layer).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    settings.update(options)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(**settings))
        with torch.no_grad():  # visible effects on a tiny model, also for init_lora_weights=True variants
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
        peft_model.save_pretrained(str(out), safe_serialization=True)
    return out


def other_weights_model(model_dir: Path, out: Path, seed: int = 1) -> Path:
    """A copy of the model in ``model_dir`` (same config, shapes and tokenizer) with other random weights."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(model_dir, out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def base_digest(engine: ModularAdaptrixEngine) -> str:
    """sha256 over the base model's state (parameters and buffers, LoRA excluded, peft wrappers see-through)."""
    digest = hashlib.sha256()
    state = engine.backend.model.state_dict()
    for key in sorted(state):
        if "lora_" in key:
            continue
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.replace(".base_layer.", ".").encode() + str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_logits(engine: ModularAdaptrixEngine) -> torch.Tensor:
    """Next-token logits of the first prompt with no adapter (through the backend's adapter switch)."""
    backend = engine.backend
    ids = backend.tokenizer(PROMPTS[1], return_tensors="pt").input_ids.to(backend.device)
    with torch.inference_mode(), backend.lora.activated([None]) as (model, _):
        return model(input_ids=ids).logits[0, -1].clone()


def snapshot(engine: ModularAdaptrixEngine) -> dict[str, Any]:
    """What must never change: base answers, base logits, base weights, and the model's config."""
    return {
        "answers": [engine.generate(prompt, adapter=None, **GREEDY) for prompt in PROMPTS],
        "logits": base_logits(engine),
        "digest": base_digest(engine),
        "config": json.dumps(engine.backend.model.config.to_dict(), sort_keys=True, default=str),
        "lora_layers": sum("lora_A" in name for name, _ in engine.backend.model.named_modules()),
    }


def assert_base_intact(engine: ModularAdaptrixEngine, fresh: dict[str, Any]) -> None:
    """The base model behaves and is stored exactly as in a fresh engine (``fresh = snapshot(...)``)."""
    now = snapshot(engine)
    assert now["digest"] == fresh["digest"]
    assert torch.equal(now["logits"], fresh["logits"])
    assert now["answers"] == fresh["answers"]
    assert now["config"] == fresh["config"]
    if not engine.loaded_adapters():
        assert now["lora_layers"] == 0, "LoRA layers left in the model with no adapter loaded"


def edit_config(folder: Path, **changes: Any) -> None:
    """Change keys of ``adapter_config.json`` (None removes a key)."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
