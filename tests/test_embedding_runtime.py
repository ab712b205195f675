"""The embedding model on ONNX Runtime: the same vectors as sentence-transformers, cached export, fallbacks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.embeddings import Embedder, default_embedding_path, get_embedder
from adaptrix_core.errors import ConfigError

TEXTS = [
    "What is the capital of France?",
    "",
    "Convertir 5 millas a kilómetros, por favor — ¿cuántos son? 🚗",
    "word " * 400,  # longer than the model's 256 tokens: cut like sentence-transformers cuts it
    "Rule 7: invoices from office 12 are checked within 9 days and filed under code 311.",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="module")
def onnx_embedder(cache):
    return Embedder(default_embedding_path(), "onnx", cache)


def test_onnx_gives_sentence_transformers_vectors(onnx_embedder):
    assert onnx_embedder.runtime == "onnx"
    expected = onnx_embedder.model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    together = onnx_embedder.encode(TEXTS, batch_size=2)  # batches of mixed lengths, padded
    assert together.shape == (len(TEXTS), 384) and together.dtype == np.float32
    assert np.abs(together - expected).max() < 1e-5
    for text, row in zip(TEXTS, expected):
        onnx_embedder.forget_recent()
        assert np.abs(onnx_embedder.encode([text])[0] - row).max() < 1e-5
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_graph_exported_once_into_the_cache_and_reused(onnx_embedder, cache):
    graphs = list((cache / "embeddings").glob("*/model.onnx"))
    assert graphs == [onnx_embedder._onnx.path]
    stamp = graphs[0].stat().st_mtime_ns
    again = Embedder(default_embedding_path(), "onnx", cache)
    assert again.runtime == "onnx" and graphs[0].stat().st_mtime_ns == stamp
    assert list((cache / "embeddings").glob("*/*")) == graphs  # no scratch files left behind


def test_damaged_cached_graph_is_exported_again(onnx_embedder, cache, tmp_path):
    own = tmp_path / "cache"
    shutil.copytree(cache, own)
    graph = next((own / "embeddings").glob("*/model.onnx"))
    graph.write_bytes(graph.read_bytes()[:1000])  # an export cut short
    embedder = Embedder(default_embedding_path(), "auto", own)
    assert embedder.runtime == "onnx" and graph.stat().st_size > 1_000_000
    assert np.abs(embedder.encode(TEXTS[:1]) - onnx_embedder.encode(TEXTS[:1])).max() < 1e-6


@pytest.fixture(scope="module")
def max_pooling_model(tmp_path_factory):
    """The bundled model with max pooling: a pipeline the ONNX runner does not reproduce."""
    source, folder = default_embedding_path(), tmp_path_factory.mktemp("max-pooling") / "model"
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "1_Pooling":
            (folder / item.name).symlink_to(item)
    (folder / "1_Pooling").mkdir()
    config = json.loads((source / "1_Pooling" / "config.json").read_text())
    config = {key: value for key, value in config.items() if not key.startswith("pooling_mode")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**config, "pooling_mode": "max"}))
    return folder


def test_a_model_onnx_cannot_reproduce(max_pooling_model, cache):
    with pytest.raises(ConfigError, match="cannot run on ONNX Runtime.*pooling 'max'"):
        Embedder(max_pooling_model, "onnx", cache)
    fallback = Embedder(max_pooling_model, "auto", cache)
    assert fallback.runtime == "torch"
    expected = fallback.model.encode(TEXTS[:2], normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(fallback.encode(TEXTS[:2]) - expected).max() < 1e-6


def test_unknown_runtime_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown embedding runtime 'gpu'"):
        get_embedder(runtime="gpu")
    with pytest.raises(ConfigError):
        ModularAdaptrixEngine(config={"router": {"embedding_runtime": "gpu"}})


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_engine_uses_the_configured_runtime(runtime, tmp_path):
    engine = ModularAdaptrixEngine(adapters_dir=str(tmp_path / "adapters"), router="semantic",
                                   config={"router": {"embedding_runtime": runtime}, "cache_dir": str(tmp_path)})
    assert engine.embedder.runtime == runtime
    assert engine.embedder.encode(["hello"]).shape == (1, 384)
