"""What the loaded plugins provide: model families, backends and routers, with who provided each.

Each hook implementation is called on its own with a ``register`` callback bound to its plugin, so
``adaptrix plugins`` can say which plugin registered what. A hook that raises, or registers a
duplicate name or a wrong type, is recorded in ``problems``; the first registration of a name wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from adaptrix_core.families import ModelFamily
from adaptrix_core.plugins import get_plugin_manager, load_failures

KINDS = ("families", "backends", "routers")


@dataclass
class Registry:
    """Families, backend factories and router factories by name, and their providing plugins."""

    families: dict[str, ModelFamily] = field(default_factory=dict)
    backends: dict[str, Callable[[], Any]] = field(default_factory=dict)
    routers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    provided_by: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    problems: list[str] = field(default_factory=list)

    def plugins_report(self, manager: pluggy.PluginManager) -> list[dict[str, Any]]:
        """One entry per loaded plugin: its name, module and what it registered, plus load failures."""
        report = []
        for name, plugin in manager.list_name_plugin():
            provided = {kind: sorted(n for n, p in self.provided_by[kind].items() if p == name) for kind in KINDS}
            report.append({"name": name, "module": getattr(plugin, "__name__", repr(plugin)), "loaded": True,
                           "error": None, **provided})
        for failure in load_failures:
            report.append({"name": failure.name, "module": failure.value, "loaded": False,
                           "error": failure.error, **{kind: [] for kind in KINDS}})
        return report


def _register_into(registry: Registry, kind: str, plugin_name: str) -> Callable[..., None]:
    def register(*args: Any) -> None:
        if kind == "families":
            (family,) = args
            if not isinstance(family, ModelFamily):
                raise TypeError(f"register() expects a ModelFamily, got {type(family).__name__}")
            name, value = family.name, family
        else:
            name, value = args
            if not callable(value):
                raise TypeError(f"register({name!r}, factory) expects a callable factory")
        table = getattr(registry, kind)
        if name in table:
            registry.problems.append(
                f"plugin {plugin_name!r} registered {kind[:-1]} {name!r}, already registered by "
                f"{registry.provided_by[kind][name]!r}; the first one is kept"
            )
            return
        table[name] = value
        registry.provided_by[kind][name] = plugin_name

    return register


def collect(manager: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's registration hooks and gather the results."""
    manager = manager or get_plugin_manager()
    registry = Registry()
    hooks = {"families": manager.hook.register_model_families, "backends": manager.hook.register_backends,
             "routers": manager.hook.register_routers}
    for kind, hook in hooks.items():
        for impl in hook.get_hookimpls():  # registration order
            try:
                impl.function(register=_register_into(registry, kind, impl.plugin_name))
            except Exception as exc:
                registry.problems.append(f"plugin {impl.plugin_name!r} failed in its {hook.name} hook: {exc}")
    return registry
