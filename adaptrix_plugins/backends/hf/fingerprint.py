"""A cheap, deterministic fingerprint of a loaded transformers model's base weights.

It identifies a base model by what it is rather than by its path or id: architecture, depth, width,
vocabulary, the shapes of every LoRA-targetable layer, and a sha256 over a few fixed tensors (the
first ``HASHED_ROWS`` rows of the input and output embeddings and of every targetable layer of the
first, middle and last blocks). Tensors are hashed after rounding to bfloat16 on the CPU, so a float32 and a
bfloat16 load of the same weights, on any device, give the same fingerprint; a float16 load may
differ (float16 rounds and clamps differently), as do other revisions or quantisations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

FINGERPRINT_FORMAT = 1
HASHED_ROWS = 64


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    rows = tensor.detach()[:HASHED_ROWS].to(device="cpu", dtype=torch.bfloat16).contiguous()
    return str(tuple(rows.shape)).encode() + rows.view(torch.int16).numpy().tobytes()


def _base_weight(model: torch.nn.Module, path: str) -> torch.Tensor:
    module = model.get_submodule(path)
    if hasattr(module, "get_base_layer"):  # a peft LoRA layer wraps the original one
        module = module.get_base_layer()
    return module.weight


def model_fingerprint(model: torch.nn.Module, shapes: Mapping[str, tuple[int, int]], layers_path: str,
                      description: Any) -> dict[str, Any]:
    """The fingerprint of ``model``'s base weights (adapters present or not).

    ``shapes`` maps the targetable layers' paths (in module order, as found before any adapter was
    added) to (in, out); ``layers_path`` is the dotted path of the block list.
    """
    num_layers = int(description.num_layers)
    layer_shapes = hashlib.sha256(
        "\n".join(f"{name}:{fan_in}:{fan_out}" for name, (fan_in, fan_out) in sorted(shapes.items())).encode()
    ).hexdigest()
    digest = hashlib.sha256()
    hashed = []
    for label, module in (("input_embedding", model.get_input_embeddings()), ("output_embedding", model.get_output_embeddings())):
        if module is not None and getattr(module, "weight", None) is not None:
            digest.update(label.encode() + _tensor_bytes(module.weight))
            hashed.append(label)
    for block in sorted({0, num_layers // 2, num_layers - 1}):
        prefix = f"{layers_path}.{block}."
        for name in (name for name in shapes if name.startswith(prefix)):
            digest.update(name.encode() + _tensor_bytes(_base_weight(model, name)))
            hashed.append(name)
    return {
        "format": FINGERPRINT_FORMAT,
        "architecture": description.architectures[0] if description.architectures else None,
        "model_type": description.model_type,
        "num_layers": num_layers,
        "hidden_size": int(description.hidden_size),
        "vocab_size": int(description.vocab_size),
        "targetable_layers": len(shapes),
        "layer_shapes_sha256": layer_shapes,
        "weights_sha256": digest.hexdigest(),
        "hashed_tensors": hashed,
        "hashed_rows": HASHED_ROWS,
        "hash_dtype": "bfloat16",
    }
