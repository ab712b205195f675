"""Fixtures of the remote-backend tests (loaded with ``pytest_plugins``): the plugin, a store, a fake vLLM."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fake_vllm import FakeVLLM, ServerThread

REPO = Path(__file__).resolve().parents[1]
DEMO = ("arithmetic", "dates", "extraction")


@contextmanager
def remote_backend_registered() -> Iterator[None]:
    """Make sure the ``remote`` backend is registered inside the block.

    A fresh install registers it through the ``adaptrix`` entry points (``pyproject.toml``; checked
    by ``test_entry_point_is_declared``); an environment installed before the entry point existed
    gets the same module registered by hand, and unregistered afterwards.
    """
    import adaptrix_plugins.backends.remote as module
    from adaptrix_core.plugins import get_plugin_manager
    from adaptrix_core.registry import collect

    manager = get_plugin_manager()
    added = "remote" not in collect().backends
    if added:
        manager.register(module, name="backend_remote")
    try:
        yield
    finally:
        if added and manager.get_plugin("backend_remote") is module:
            manager.unregister(module)


@pytest.fixture
def remote_plugin() -> Iterator[None]:
    """The ``remote`` backend registered for one test (see ``remote_backend_registered``)."""
    with remote_backend_registered():
        yield


@pytest.fixture(scope="module")
def remote_plugin_module() -> Iterator[None]:
    """The ``remote`` backend registered for a whole module (for module-scoped engines)."""
    with remote_backend_registered():
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A copy of the demo adapters (the routers read their cards; vLLM 'mounts' this folder at /adapters)."""
    root = tmp_path_factory.mktemp("remote-store") / "adapters"
    for name in DEMO:
        shutil.copytree(REPO / "adapters" / name, root / name)
    return root


@pytest.fixture
def fake(store) -> FakeVLLM:
    """vLLM started with ``--lora-modules dates=/adapters/dates arithmetic=/adapters/arithmetic``."""
    return FakeVLLM(loras={"dates": "/adapters/dates", "arithmetic": "/adapters/arithmetic"},
                    mounts={"/adapters": str(store)})


@pytest.fixture
def upstream(fake) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as server:
        yield server


@pytest.fixture
def engine_for(store) -> Callable[..., Any]:
    """``engine_for(url, **plugins_remote)``: a keyword-routed remote engine on ``url`` over the store.

    Retries are fast (one, after 10 ms) and the store is mapped to ``/adapters`` (where the fake
    vLLM mounts it); keyword arguments override ``plugins.remote`` settings.
    """
    from adaptrix_core import ModularAdaptrixEngine

    def make(url: str, **remote: Any):
        options = {"retries": 1, "backoff": 0.01, "path_map": {str(store): "/adapters"}, **remote}
        config = {"plugins": {"remote": options}, "router": {"top_k": 1}}
        return ModularAdaptrixEngine(url, backend="remote", adapters_dir=str(store), router="keyword", config=config)

    return make
