"""The routers' view of the store: cached between requests, refreshed when the store changes.

No language model and no embedder: ``RouterService.candidates()`` and the embedder's memory of
recent questions are exercised alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.config import RouterSettings
from adaptrix_core.routing import service as service_module
from adaptrix_core.routing.service import RouterService

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "store"
    for name in ("dates", "arithmetic"):
        shutil.copytree(REPO / "adapters" / name, folder / name)
    return AdapterManager(folder)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(service_module.time, "monotonic", clock)
    return clock


def service(store: AdapterManager, interval: float) -> RouterService:
    return RouterService(RouterSettings(refresh_interval=interval), store, registry=lambda: None, embedder=lambda: None)


def descriptions(routing: RouterService) -> dict[str, str]:
    return {card.name: card.description for card in routing.candidates()}


def edit_elsewhere(folder: Path, description: str) -> None:
    """Rewrite an adapter's metadata as another process would (not through this store object)."""
    meta_file = folder / "adaptrix.json"
    meta = json.loads(meta_file.read_text())
    meta["description"] = description
    meta_file.write_text(json.dumps(meta))
    stamp = meta_file.stat().st_mtime_ns + 5_000_000
    os.utime(meta_file, ns=(stamp, stamp))  # a distinct mtime even on coarse file systems


def test_external_edits_are_seen_after_the_interval(store, clock):
    routing = service(store, interval=5.0)
    before = descriptions(routing)
    edit_elsewhere(store.directory / "dates", "edited elsewhere")
    clock.now += 1.0
    assert descriptions(routing) == before  # within the interval: the cached cards, no file checked
    clock.now += 5.0
    assert descriptions(routing)["dates"] == "edited elsewhere"


def test_interval_zero_checks_every_request(store, clock):
    routing = service(store, interval=0.0)
    descriptions(routing)
    edit_elsewhere(store.directory / "dates", "seen at once")
    assert descriptions(routing)["dates"] == "seen at once"


def test_changes_through_the_store_are_seen_at_once(store, clock):
    routing = service(store, interval=3600.0)
    descriptions(routing)
    store.update_metadata("arithmetic", description="new words")
    assert descriptions(routing)["arithmetic"] == "new words"
    store.delete("dates")
    assert set(descriptions(routing)) == {"arithmetic"}


def test_adapters_added_or_removed_elsewhere_are_seen_at_once(store, clock, tmp_path):
    routing = service(store, interval=3600.0)
    assert set(descriptions(routing)) == {"dates", "arithmetic"}
    other = AdapterManager(store.directory)  # another process's view of the same folder
    other.import_peft(REPO / "adapters" / "extraction", "extraction", description="added elsewhere")
    assert descriptions(routing)["extraction"] == "added elsewhere"
    other.delete("arithmetic")
    assert set(descriptions(routing)) == {"dates", "extraction"}


def test_refresh_interval_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RouterSettings(refresh_interval=-1)


def test_embedder_remembers_recent_single_texts():
    from adaptrix_core.embeddings import get_embedder

    embedder = get_embedder()
    calls = []
    original = embedder._compute

    def counting(texts, batch_size):
        calls.append(list(texts))
        return original(texts, batch_size)

    embedder._compute = counting
    try:
        question = "How long does the probation period last? (embedder memory test)"
        first = embedder.encode([question])
        first[0, 0] = 42.0  # a caller's change must not reach the remembered vector
        second = embedder.encode([question])
        assert len(calls) == 1
        assert second[0, 0] != 42.0
        together = embedder.encode([question, "another text"])  # batches are always computed
        assert len(calls) == 2
        assert abs(float(together[0] @ second[0]) - 1.0) < 1e-5
        for index in range(embedder.recent_size + 1):
            embedder.encode([f"filler {index}"])
        embedder.encode([question])  # pushed out by newer questions: computed again
        assert calls[-1] == [question]
    finally:
        del embedder._compute
