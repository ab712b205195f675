"""What the CLI remembers between invocations: the adapters made active with ``adaptrix load``.

Kept per adapter store in ``<cache_dir>/cli-state.json``; written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptrix_core.config import AdaptrixConfig
from adaptrix_core.jsonio import write_json_atomic


def _state_file(config: AdaptrixConfig) -> Path:
    return config.resolved_cache_dir() / "cli-state.json"


def _store_key(config: AdaptrixConfig) -> str:
    return str(Path(config.adapters.directory).expanduser().resolve())


def _read(config: AdaptrixConfig) -> dict:
    try:
        data = json.loads(_state_file(config).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def active_adapters_for(config: AdaptrixConfig) -> list[str]:
    """Adapters the CLI uses when a command names none."""
    active = _read(config).get("active", {}).get(_store_key(config), [])
    return [name for name in active if isinstance(name, str)]


def set_active_adapters(config: AdaptrixConfig, names: list[str]) -> None:
    """Remember ``names`` as the active adapters of this store."""
    state = _read(config)
    state.setdefault("active", {})[_store_key(config)] = list(dict.fromkeys(names))
    write_json_atomic(_state_file(config), state)  # a failed write leaves the old state as it was
