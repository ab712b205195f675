"""Hook specifications: the whole contract between Adaptrix and its plugins.

A plugin is a module (or object) with functions decorated by ``adaptrix_core.hookimpl`` whose
names match the specs below; it is found through the ``adaptrix`` entry-point group. Each hook
receives a ``register`` callback and calls it once per thing it provides; ``register_commands``
receives the click group instead, as in ``llm`` and ``datasette``.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("adaptrix")
hookimpl = HookimplMarker("adaptrix")


@hookspec
def register_model_families(register):
    """Register model families: call ``register(family)`` with a ``ModelFamily`` for each."""


@hookspec
def register_backends(register):
    """Register backends: call ``register(name, factory)``; ``factory()`` returns a ``BaseModelInterface``."""


@hookspec
def register_routers(register):
    """Register adapter routers: call ``register(name, factory)``; ``factory(settings, resources)`` returns a ``Router``."""


@hookspec
def register_commands(cli):
    """Add CLI commands: call ``cli.add_command(command)`` on the ``adaptrix`` click group ``cli``."""
