"""What the loaded plugins provide: model families, backends and routers, with who provided each.

Precedence is deterministic: built-in plugins (those in ``adaptrix_plugins``) register first, then
third-party plugins in the order of their names. A later plugin that registers a name already taken
overrides it on purpose: the override is logged as a warning, recorded in ``overrides`` and shown
by ``adaptrix plugins``. The outcome never depends on entry-point discovery order.

Each hook implementation is called on its own with a ``register`` callback bound to its plugin. A
hook that raises, or registers something invalid (a wrong type, a router factory with the wrong
signature), is recorded in ``problems`` and that registration is refused; asking for a refused name
later raises ``PluginError`` with the reason.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from adaptrix_core.errors import PluginError
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.plugins import get_plugin_manager, is_builtin_plugin, load_failures

KINDS = ("families", "backends", "routers")
SINGULAR = {"families": "family", "backends": "backend", "routers": "router"}
_HOOKS = {"families": "register_model_families", "backends": "register_backends", "routers": "register_routers"}
#: Positional arguments each kind's factory is called with (families register values, not factories).
_FACTORY_ARGUMENTS = {"backends": (), "routers": ("settings", "resources")}

log = logging.getLogger("adaptrix.plugins")


@dataclass
class Registry:
    """Families, backend factories and router factories by name, and their providing plugins."""

    families: dict[str, ModelFamily] = field(default_factory=dict)
    backends: dict[str, Callable[[], Any]] = field(default_factory=dict)
    routers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    provided_by: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    overrides: list[dict[str, str]] = field(default_factory=list)
    rejected: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    problems: list[str] = field(default_factory=list)

    def factory(self, kind: str, name: str) -> Any:
        """The registered ``kind`` entry ``name``; ``PluginError`` when a plugin's registration was refused."""
        table = getattr(self, kind)
        if name in table:
            return table[name]
        if name in self.rejected[kind]:
            raise PluginError(self.rejected[kind][name])
        raise KeyError(name)

    def plugins_report(self, manager: pluggy.PluginManager) -> list[dict[str, Any]]:
        """One entry per loaded plugin: its name, module, what it registered (and won), plus load failures."""
        report = []
        for name, plugin in _ordered_plugins(manager):
            provided = {kind: sorted(n for n, p in self.provided_by[kind].items() if p == name) for kind in KINDS}
            overridden = [f"{o['kind']} {o['name']} (by {o['winner']})" for o in self.overrides if o["loser"] == name]
            report.append({"name": name, "module": _module_of(plugin), "builtin": is_builtin_plugin(plugin),
                           "loaded": True, "error": None, "overridden": overridden, **provided})
        for failure in load_failures:
            report.append({"name": failure.name, "module": failure.value, "builtin": False, "loaded": False,
                           "error": failure.error, "overridden": [], **{kind: [] for kind in KINDS}})
        return report


def _module_of(plugin: Any) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__module__


def _ordered_plugins(manager: pluggy.PluginManager) -> list[tuple[str, Any]]:
    """Built-in plugins first, then the others, each group sorted by plugin name."""
    return sorted(manager.list_name_plugin(), key=lambda item: (not is_builtin_plugin(item[1]), item[0]))


def _check_factory(kind: str, name: str, factory: Any) -> None:
    if not callable(factory):
        raise PluginError(f"register({name!r}, factory) expects a callable factory, got {type(factory).__name__}")
    expected = _FACTORY_ARGUMENTS[kind]
    try:
        inspect.signature(factory).bind(*expected)
    except TypeError as exc:
        shown = ", ".join(expected)
        raise PluginError(f"the {SINGULAR[kind]} factory for {name!r} must accept ({shown}): {exc}") from None
    except ValueError:  # builtins without a signature: nothing to check
        pass


def _register_into(registry: Registry, kind: str, plugin_name: str) -> Callable[..., None]:
    def register(*args: Any) -> None:
        if kind == "families":
            (family,) = args
            if not isinstance(family, ModelFamily):
                raise PluginError(f"register() expects a ModelFamily, got {type(family).__name__}")
            name, value = family.name, family
        else:
            name, value = args
            try:
                _check_factory(kind, name, value)
            except PluginError as exc:
                registry.rejected[kind][name] = f"Plugin {plugin_name!r} registered {SINGULAR[kind]} {name!r} wrongly: {exc}."
                raise
        table = getattr(registry, kind)
        if name in table:
            previous = registry.provided_by[kind][name]
            registry.overrides.append({"kind": SINGULAR[kind], "name": name, "winner": plugin_name, "loser": previous})
            log.warning("plugin %r overrides %s %r registered by %r", plugin_name, SINGULAR[kind], name, previous)
        table[name] = value
        registry.rejected[kind].pop(name, None)
        registry.provided_by[kind][name] = plugin_name

    return register


def collect(manager: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's registration hooks, built-ins first, and gather the results."""
    manager = manager or get_plugin_manager()
    registry = Registry()
    order = {name: position for position, (name, _) in enumerate(_ordered_plugins(manager))}
    for kind in KINDS:
        hook = getattr(manager.hook, _HOOKS[kind])
        for impl in sorted(hook.get_hookimpls(), key=lambda impl: order.get(impl.plugin_name, len(order))):
            try:
                impl.function(register=_register_into(registry, kind, impl.plugin_name))
            except Exception as exc:
                registry.problems.append(f"plugin {impl.plugin_name!r} failed in its {hook.name} hook: {exc}")
    return registry
