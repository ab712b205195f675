"""One built graph opened with onnxruntime-genai: the model, its decoder and (with slots) its adapters.

The builder options per precision were chosen on the demo adapters' held-out sets (docs/onnx.md):

* int4: ``k_quant_mixed`` (k-quant weights; the LM head and the most sensitive projections in int8).
  Plain round-to-nearest int4, which also quantizes the tied embedding, lost every extraction
  answer; k_quant_mixed kept them, at 105 instead of 83 MB.
* int8: round-to-nearest with ``shared_embeddings=false``: with tied embeddings (SmolLM2) the
  builder otherwise writes an int8 LM head that its own embedding node cannot read (an invalid graph).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptrix_core.cpu import usable_cores
from adaptrix_core.errors import ModelLoadError
from adaptrix_plugins.backends.onnx import build
from adaptrix_plugins.backends.onnx.adapters import OnnxAdapters
from adaptrix_plugins.backends.onnx.decoding import PAD_ID, Decoder

RECIPES: dict[str, dict[str, str]] = {
    "int4": {"algo_config": "k_quant_mixed"},
    "int8": {"shared_embeddings": "false"},
    "fp32": {},
}


@dataclass
class Graph:
    """An opened graph and what it was built with."""

    precision: str
    folder: Path
    slots: list[str]
    built: bool
    manifest: dict[str, Any]
    context_length: int
    model: Any
    decoder: Decoder
    adapters: OnnxAdapters | None

    def weight_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("model.onnx*") if f.is_file())


def open_graph(precision: str, slots: Sequence[str], *, model_folder: Path, cache_dir: Path,
               shapes: Mapping[str, tuple[int, int]], num_layers: int, end_ids: Sequence[int],
               decode: Callable[[list[int]], str], threads: int | None, build_threads: int | None,
               progress: Callable[[str, int, int], None] | None) -> Graph:
    """Build (or find in the cache) the ``precision`` graph with ``slots`` and open it."""
    import onnxruntime_genai as og

    folder, built = build.ensure_built(model_folder, cache_dir, precision, slots, shapes, num_layers, progress,
                                       build_threads, RECIPES[precision])
    genai_config = build.read_json(folder / "genai_config.json")
    context_length = int(genai_config.get("model", {}).get("context_length") or 0)
    # pad -1: no real token has it (see decoding); the end tokens are the backend's, so min_length masks them all
    overlay: dict[str, Any] = {"model": {"pad_token_id": PAD_ID, "eos_token_id": list(end_ids) or [PAD_ID]}}
    # ONNX Runtime's own default (0) decoded at 75 instead of 106 tok/s on the 2-core VM: name the usable cores
    overlay["model"]["decoder"] = {"session_options": {"intra_op_num_threads": threads or usable_cores()}}
    try:
        config = og.Config(str(folder))
        config.overlay(json.dumps(overlay))
        model = og.Model(config)
    except Exception as exc:  # genai raises plain RuntimeErrors
        raise ModelLoadError(f"onnxruntime-genai could not open the ONNX model in {str(folder)!r}: {exc}. "
                             "Delete that folder to rebuild it.") from exc
    adapters = OnnxAdapters(og, model, cache_dir / "onnx" / "adapters", slots) if slots else None
    decoder = Decoder(og, model, adapters.handle if adapters else None, end_ids, decode)
    return Graph(precision, folder, list(slots), built, build.read_manifest(folder), context_length, model, decoder,
                 adapters)
