"""Shared setup of the adapter benchmarks (``bench_adapters.py``): the scratch store, the demo
adapters and their prompts.

The demo adapters are copied (``AdapterManager.export``) from ``--source-adapters`` into a
temporary store, plus a fourth adapter (a renamed copy of the first, or random ones with
``--fourth-adapter random`` / ``--synthetic``); the repository's ``adapters/`` folder is only read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

DEMO_DATA = harness.REPO_ROOT / "data" / "demo"
DEMO_ADAPTERS = ("arithmetic", "extraction", "dates")
# Prompts for the fourth adapter, which is a renamed copy of a demo adapter (no task of its own).
EXTRA_PROMPTS = (
    "Give three tips for keeping a small vegetable garden healthy.",
    "Explain in two sentences why the sky looks blue.",
)


def read_prompts(task: str, count: int) -> list[str]:
    """The first ``count`` prompts of ``data/demo/<task>/test.jsonl``."""
    path = DEMO_DATA / task / "test.jsonl"
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
            if len(prompts) == count:
                break
    if len(prompts) < count:
        raise SystemExit(f"error: {path} has fewer than {count} prompts")
    return prompts


def lora_layers(peft: Any) -> list[Any]:
    """The peft model's LoRA layers."""
    from peft.tuners.lora import LoraLayer

    return [m for m in peft.modules() if isinstance(m, LoraLayer)]


# -- setup: scratch store and adapters -------------------------------------------------------------------
def randomise_b(engine: Any, name: str, seed: int) -> None:
    """Give a freshly created adapter non-zero B matrices (peft initialises B to 0) so it changes outputs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in zip(
            [n for n, _ in engine.backend.lora.peft.named_parameters()
             if f".{engine.backend.lora.internal(name)}." in f"{n}." and "lora_" in n],
            engine.backend.lora.parameters(name),
        ):
            if "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def prepare_store(args: argparse.Namespace, store: Path, engine_factory: Callable[[], Any]) -> tuple[Any, list[str], dict[str, str]]:
    """Fill the scratch store; return (engine, the 4 adapter names, how each adapter was made)."""
    from adaptrix_core.adapters.store import AdapterManager

    names = list(args.adapters)
    provenance: dict[str, str] = {}
    source = AdapterManager(args.source_adapters)
    scratch = AdapterManager(store)
    if not args.synthetic:
        missing = [n for n in names if n not in source.names()]
        if missing:
            raise SystemExit(
                f"error: adapters {missing} are not in {args.source_adapters} (train them with "
                "scripts/train_demo_adapters.py, or pass --synthetic to try the script with random adapters)"
            )
        for name in names:
            source.export(name, store / name)  # validates, copies the PEFT folder + adaptrix.json
            provenance[name] = f"demo adapter copied from {args.source_adapters / name}"
    fourth = f"{names[0]}_copy" if args.fourth_adapter == "copy" else "random4"
    if args.fourth_adapter == "copy" and not args.synthetic:
        scratch.import_peft(store / names[0], fourth,
                            description=f"benchmark copy of {names[0]} (same weights, another name)")
        provenance[fourth] = f"copy of {names[0]} imported with AdapterManager.import_peft under another name"
    engine = engine_factory()
    engine.initialize()
    to_create = ([*names] if args.synthetic else []) + ([fourth] if args.fourth_adapter == "random" or args.synthetic else [])
    for index, name in enumerate(to_create):
        engine.create_adapter(name, layers="middle", rank=16, alpha=32)
        randomise_b(engine, name, seed=1000 + index)
        engine.save_adapter(name, overwrite=True, description="benchmark adapter with random B (untrained)")
        engine.unload_adapter(name)
        provenance[name] = ("create_adapter(layers='middle', rank=16, alpha=32) with B ~ N(0, 0.02^2) "
                            "(seeded), saved to the scratch store")
    return engine, [*names, fourth], provenance

