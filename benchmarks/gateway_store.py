"""Synthetic adapter stores for the gateway benchmark: N valid adapter folders with distinct routing cards.

Each adapter is a real store entry (PEFT ``adapter_config.json``, a tiny safetensors file with one
LoRA pair, ``adaptrix.json`` metadata with its sha256) whose card reads like a task adapter: a
description, 4-6 keywords and 3 example prompts. Keywords are pseudo-words made of syllables, each
adapter owning two of its own and sharing the others with a few neighbours, so keyword matching
and embeddings both have real work to do. The three demo adapters are copied in too.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

SYLLABLES = ("ka ri to mu se na lo pe vi da zu ne mo ta ki so ra fe gu li ba de po sa "
             "hi ju co we ya xo").split()
TASKS = ("Summarises", "Translates", "Classifies", "Extracts fields from", "Rewrites", "Answers questions about",
         "Converts units in", "Checks the grammar of", "Tags entities in", "Scores the sentiment of")
THINGS = ("invoices", "shipping manifests", "tide tables", "lab reports", "support tickets", "legal clauses",
          "recipes", "sensor logs", "insurance claims", "meeting notes", "product reviews", "flight plans")
DEMO = ("arithmetic", "dates", "extraction")


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 4)))


def write_adapter(folder: Path, name: str, description: str, keywords: list[str], examples: list[str],
                  base_model: str) -> None:
    """One valid store adapter with a 1-rank LoRA pair on one q_proj (the smallest real weights)."""
    import numpy as np
    from safetensors.numpy import save_file

    from adaptrix_core.adapters.metadata import AdapterMetadata, sha256_of

    folder.mkdir(parents=True)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": np.zeros((1, 8), np.float32),
               f"{prefix}.lora_B.weight": np.zeros((8, 1), np.float32)}, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["q_proj"], "layers_to_transform": [0],
              "base_model_name_or_path": base_model, "bias": "none", "lora_dropout": 0.0}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    meta = AdapterMetadata(name=name, description=description, base_model=base_model, family="llama",
                           target_layers=[0], target_modules=["q_proj"], rank=1, alpha=2.0,
                           routing={"keywords": keywords, "example_prompts": examples},
                           weights_sha256=sha256_of(folder / "adapter_model.safetensors"))
    (folder / "adaptrix.json").write_text(meta.model_dump_json(indent=2))


def build_store(root: Path, count: int, seed: int = 0, base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
                demo_from: Path | None = None) -> list[dict]:
    """Write ``count`` synthetic adapters (plus the demo ones from ``demo_from``) into ``root``; return their cards."""
    rng = random.Random(seed)
    vocabulary = list(dict.fromkeys(pseudo_word(rng) for _ in range(count * 4)))
    cards = []
    for index in range(count):
        own = vocabulary[2 * index: 2 * index + 2]
        shared = rng.sample(vocabulary, rng.randint(2, 4))
        keywords = list(dict.fromkeys(own + shared))
        thing = rng.choice(THINGS)
        task = rng.choice(TASKS)
        description = f"{task} {thing} written in the {own[0]} house style ({own[1]} edition)."
        examples = [f"{task.split()[0]} this {thing[:-1]} the {own[0]} way: {pseudo_word(rng)} {pseudo_word(rng)}.",
                    f"Please use {own[1]} rules on these {thing}.",
                    f"I need the {own[0]} {own[1]} treatment for {rng.choice(THINGS)}."]
        name = f"task-{index:04d}"
        write_adapter(root / name, name, description, keywords, examples, base_model)
        cards.append({"name": name, "keywords": keywords, "examples": examples})
    for name in DEMO if demo_from is not None else ():
        shutil.copytree(demo_from / name, root / name)
    return cards
