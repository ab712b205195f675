"""Load plugins from the ``adaptrix`` entry-point group into one pluggy plugin manager.

``ADAPTRIX_LOAD_PLUGINS`` (comma separated entry-point names) limits which plugins load; set to an
empty string it loads none. A plugin that fails to import is recorded in ``load_failures`` and
reported by ``adaptrix plugins``; it does not stop the others.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from adaptrix_core import hookspecs

ENTRY_POINT_GROUP = "adaptrix"
ALLOW_LIST_VARIABLE = "ADAPTRIX_LOAD_PLUGINS"


@dataclass(frozen=True)
class PluginLoadFailure:
    """An entry point that could not be imported or registered."""

    name: str
    value: str
    error: str


_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None
load_failures: list[PluginLoadFailure] = []


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_VARIABLE)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


BUILTIN_PACKAGE = "adaptrix_plugins"


def is_builtin_plugin(plugin: object) -> bool:
    """True for the plugins shipped with Adaptrix (modules of the ``adaptrix_plugins`` package)."""
    module = getattr(plugin, "__name__", None) or type(plugin).__module__
    return module == BUILTIN_PACKAGE or module.startswith(BUILTIN_PACKAGE + ".")


def _load_order(entry_point) -> tuple[bool, str]:
    """Built-ins first, then the rest by name: precedence never depends on discovery order."""
    module = entry_point.value.split(":")[0]
    return (not (module == BUILTIN_PACKAGE or module.startswith(BUILTIN_PACKAGE + ".")), entry_point.name)


def _build_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    allowed = _allow_list()
    failures: list[PluginLoadFailure] = []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_load_order):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if manager.get_plugin(entry_point.name) is not None:
            continue
        try:
            manager.register(entry_point.load(), name=entry_point.name)
        except Exception as exc:  # a broken third-party plugin must not take the engine down
            failures.append(PluginLoadFailure(entry_point.name, entry_point.value, f"{type(exc).__name__}: {exc}"))
    manager.check_pending()
    load_failures[:] = failures
    return manager


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _build_manager()
        return _manager


def reload_plugins() -> pluggy.PluginManager:
    """Forget loaded plugins and load the entry points again (after installing a plugin, in tests)."""
    global _manager
    with _lock:
        _manager = _build_manager()
        return _manager
