"""Shared pytest fixtures: tiny random-weight models of every supported family, and the real default model.

Nothing here touches the network: the Hugging Face libraries are put in offline mode when this file
is imported (before any test imports transformers), and the tiny models are built locally by
``tests/tiny_models.py``.

* ``tiny_model_dir(kind)`` returns the folder of the tiny model of ``kind`` (see
  ``tiny_models.KINDS``), built at most once per session under pytest's temporary directory.
* ``single_torch_thread`` runs torch on one CPU thread for its scope and restores the previous
  setting afterwards. Tiny models gain nothing from threads, and on small CPU machines OpenMP's
  per-op start-up cost dominates (a 2-thread ``index_add_``, used by the MoE blocks, costs ~40 ms).
* ``default_engine`` is a ``ModularAdaptrixEngine()`` on the real embedded default model
  (SmolLM2-135M-Instruct), initialized once and cleaned up at the end of the session. Only tests
  marked ``slow`` should use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# The request log of every engine the tests make goes to a scratch file, not the user's cache: through
# the environment, and as the default for engines built from a config object (which ignore it).
_TEST_LOG = str(Path(tempfile.mkdtemp(prefix="adaptrix-test-log-")) / "log.sqlite")
os.environ.setdefault("ADAPTRIX_MONITORING__PATH", _TEST_LOG)

import pytest  # noqa: E402

from adaptrix_core.config import MonitoringSettings  # noqa: E402

_real_resolved_path = MonitoringSettings.resolved_path


def _scratch_resolved_path(self, cache_dir):
    """The user's default cache is replaced by the scratch log; any other folder resolves as usual."""
    if not self.path and Path(cache_dir).expanduser() == Path("~/.cache/adaptrix").expanduser():
        return Path(_TEST_LOG)
    return _real_resolved_path(self, cache_dir)


MonitoringSettings.resolved_path = _scratch_resolved_path
from tiny_models import KINDS, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A function ``kind -> folder`` of tiny model folders, each built on first request only."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def folder_for(kind: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"Unknown tiny model kind {kind!r}; known: {', '.join(KINDS)}.")
        if kind not in built:
            built[kind] = build_tiny_model(kind, root / f"tiny-{kind}")
        return built[kind]

    return folder_for


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Run torch on one CPU thread while the requesting module runs; restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def default_engine():
    """The engine on the real default model, loaded once per session (for tests marked ``slow``)."""
    from adaptrix_core import ModularAdaptrixEngine

    engine = ModularAdaptrixEngine()
    engine.initialize()
    try:
        yield engine
    finally:
        engine.cleanup()
