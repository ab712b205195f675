"""What the upstream serves (``GET /v1/models``), and how it joins the local store's metadata.

vLLM lists its base model(s) with ``parent: null`` and each LoRA adapter with ``parent`` set to the
base model (``root`` is the adapter's path on the vLLM machine); ``adaptrix serve`` lists its base
model, its store's adapters and ``auto``, all ``owned_by: "adaptrix"``. Servers that give no
``parent`` at all have every model besides the base one taken as an adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptrix_core.adapters.compatibility import normalise_model_name
from adaptrix_core.errors import RemoteBackendError

ADAPTRIX_OWNER = "adaptrix"
AUTO_MODEL = "auto"


@dataclass(frozen=True)
class UpstreamModels:
    """The upstream's base model id, its adapters (id -> model card) and what kind of server it is."""

    base: str
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    server: str = "unknown"
    max_model_len: int | None = None
    base_names: tuple[str, ...] = ()

    @property
    def is_adaptrix(self) -> bool:
        """True when the upstream is ``adaptrix serve`` (it composes weighted adapter mixes)."""
        return self.server == ADAPTRIX_OWNER

    def is_base_model(self, model_name: str | None) -> bool:
        """True when ``model_name`` (an adapter's recorded base model) is the model the upstream serves."""
        if not model_name:
            return True
        wanted = normalise_model_name(str(model_name))
        return any(normalise_model_name(name) == wanted for name in self.base_names if name)


def parse_models(body: Any, url: str, base_override: str | None = None) -> UpstreamModels:
    """Read a ``/v1/models`` answer; ``RemoteBackendError`` when it is not one or lacks the base model."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        raise RemoteBackendError(
            f"GET {url} did not answer with an OpenAI model list ({{'data': [{{'id': ...}}, ...]}}): "
            f"{str(body)[:200]}. Is this the base URL of an OpenAI-compatible server (ending in /v1)?", url=url)
    if not data:
        raise RemoteBackendError(f"GET {url} lists no models: the upstream serves nothing yet.", url=url)
    owners = {m.get("owned_by") for m in data}
    server = ADAPTRIX_OWNER if ADAPTRIX_OWNER in owners else str(data[0].get("owned_by") or "unknown")
    ids = [m["id"] for m in data]
    if base_override is not None:
        if base_override not in ids:
            raise RemoteBackendError(
                f"plugins.remote.base_model is {base_override!r}, but the upstream at {url} serves "
                f"{', '.join(ids)}. Set it to one of those (or leave it unset).", url=url)
        base_card = data[ids.index(base_override)]
    else:
        base_card = next((m for m in data if m.get("parent") is None and m["id"] != AUTO_MODEL), data[0])
    has_parents = any(m.get("parent") is not None for m in data)
    adapters = {}
    for card in data:
        name = card["id"]
        if name == base_card["id"] or (server == ADAPTRIX_OWNER and name == AUTO_MODEL):
            continue
        if card.get("parent") is not None or not has_parents:
            adapters[name] = dict(card)
    max_len = base_card.get("max_model_len")
    root = base_card.get("root")
    names = (base_card["id"], root if isinstance(root, str) else "")
    return UpstreamModels(base_card["id"], adapters, server, max_len if isinstance(max_len, int) and max_len > 0 else None,
                          names)


def merge_listing(rows: Sequence[Mapping[str, Any]], models: UpstreamModels, loaded: Sequence[str],
                  active: Sequence[str]) -> list[dict[str, Any]]:
    """The engine's ``list_adapters`` rows plus the upstream's adapters, each row saying ``upstream``.

    Store adapters keep their metadata (description, metrics: what routers and users read) and get
    ``upstream: True`` when the upstream serves them now; the upstream's other adapters are added
    with ``saved: False`` and empty metadata.
    """
    merged = {row["name"]: {**row, "upstream": row["name"] in models.adapters} for row in rows}
    for name in models.adapters:
        if name not in merged:
            merged[name] = {"name": name, "loaded": name in loaded, "active": name in active, "saved": False,
                            "description": "", "target_layers": None, "rank": None, "performance_metrics": {},
                            "problem": None, "upstream": True}
    return [merged[name] for name in sorted(merged)]


def upstream_only_cards(cards: Sequence[Any], models: UpstreamModels) -> list[Any]:
    """Routing candidates: the store's cards plus a bare card for each upstream adapter without one.

    A bare card has only its name; ``router.keywords`` in the config gives it keywords.
    """
    from adaptrix_core.routing.selection import AdapterCard

    known = {card.name for card in cards}
    return [*cards, *(AdapterCard(name) for name in sorted(models.adapters) if name not in known)]


def map_path(local: str, path_map: Mapping[str, str]) -> str:
    """``local`` as the upstream sees it: the longest matching ``path_map`` prefix replaced (whole components)."""
    best = None
    for prefix in path_map:
        trimmed = prefix.rstrip("/") or "/"
        if local == trimmed or local.startswith(trimmed.rstrip("/") + "/"):
            if best is None or len(trimmed) > len(best[0]):
                best = (trimmed, path_map[prefix])
    if best is None:
        return local
    rest = local[len(best[0]):].lstrip("/")
    target = best[1].rstrip("/") or "/"
    return f"{target.rstrip('/')}/{rest}" if rest else target
