"""The embedding model on ONNX Runtime: the same vectors as sentence-transformers, about 3x sooner.

A single question through sentence-transformers on torch spends most of its ~10 ms in per-operator
overhead; the same graph on ONNX Runtime takes 3-5 ms on 2 cores, which is what a routing/RAG
gateway adds to each request. The transformer is exported once per model folder (torch's exporter,
~1 s) into ``<cache_dir>/embeddings/`` and checked against torch before use; tokenisation and
pooling stay sentence-transformers' own, so the vectors agree to ~1e-7.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptrix_core.cpu import usable_cores

FORMAT = 1  # bump when the export changes, so old caches are not reused
POOLINGS = ("mean", "cls")
PROBE = ("Adaptrix checks that the exported graph gives the same vectors.", "Short one.")
TOLERANCE = 1e-4


class UnsupportedForOnnx(Exception):
    """The model's pipeline is not one this runner reproduces (other modules, other pooling)."""


def pipeline_of(model: Any) -> tuple[Any, str]:
    """(transformer module, pooling mode) of a Transformer -> Pooling [-> Normalize] sentence-transformers model."""
    names = [type(module).__name__ for module in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedForOnnx(f"modules {names}")
    mode = model[1].pooling_mode
    if mode not in POOLINGS:
        raise UnsupportedForOnnx(f"pooling {mode!r}")
    return model[0], mode


def cache_key(folder: Path) -> str:
    """A hash of the model folder's files (names, sizes, times), the torch version and the export format."""
    import torch

    digest = hashlib.sha256(f"{FORMAT}|{torch.__version__}|{folder.resolve()}".encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "onnx" not in path.parts:
            stat = path.stat()
            digest.update(f"|{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class OnnxEncoder:
    """Runs a sentence-transformers model's transformer on ONNX Runtime; pools and normalises in numpy."""

    def __init__(self, model: Any, folder: Path, cache_dir: Path):
        self.model = model
        self.transformer, self.pooling = pipeline_of(model)
        target = Path(cache_dir).expanduser() / "embeddings" / f"{folder.name}-{cache_key(folder)}" / "model.onnx"
        if not target.is_file():
            self._export(target)
        try:
            self.session = self._open(target)
        except Exception:  # noqa: BLE001 - a cached graph cut short or damaged: export it again
            self._export(target)
            self.session = self._open(target)
        self.path = target
        self.inputs = [item.name for item in self.session.get_inputs()]
        self._check()

    def _features(self, texts: Sequence[str]) -> dict[str, Any]:
        features = self.model.preprocess(list(texts))
        return {name: value for name, value in features.items() if hasattr(value, "numpy")}

    def _export(self, target: Path) -> None:
        import torch

        features = self._features(PROBE)
        names = list(features)
        axes = {name: {0: "batch", 1: "tokens"} for name in names}
        axes["token_embeddings"] = {0: "batch", 1: "tokens"}
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(suffix=".onnx.tmp", dir=target.parent)
        os.close(handle)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(_last_hidden_state(self.transformer.auto_model, names), tuple(features[n] for n in names),
                                  scratch, input_names=names, output_names=["token_embeddings"],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
            os.replace(scratch, target)  # another process may export the same file: both are whole
        finally:
            Path(scratch).unlink(missing_ok=True)

    @staticmethod
    def _open(path: Path) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = usable_cores()
        options.inter_op_num_threads = 1
        # No spinning: in a process that also generates with torch, idle-spinning threads would take its cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _check(self) -> None:
        import numpy as np

        expected = self.model.encode(list(PROBE), normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        difference = float(np.abs(self.encode(PROBE) - expected).max())
        if not difference <= TOLERANCE:
            raise UnsupportedForOnnx(f"the exported graph differs from torch by {difference:.2g}")

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        """Normalised float32 embeddings of ``texts``; batches of similar length, like sentence-transformers."""
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        parts = [self._batch([texts[i] for i in order[start:start + batch_size]])
                 for start in range(0, len(order), batch_size)]
        vectors = np.concatenate(parts)
        result = np.empty_like(vectors)
        result[order] = vectors
        return result

    def _batch(self, texts: list[str]):
        import numpy as np

        features = self._features(texts)
        feeds = {name: features[name].numpy() for name in self.inputs}
        tokens = self.session.run(None, feeds)[0]
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            mask = features["attention_mask"].numpy()[..., None].astype(np.float32)
            pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32, copy=False)


def _last_hidden_state(model: Any, names: list[str]) -> Any:
    """The transformer as a module of positional tensors returning its last hidden state."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors)), return_dict=True).last_hidden_state

    return Wrapped().eval()
