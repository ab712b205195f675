"""The ``adaptrix`` command line: one module per command group, attached to the group in ``app``.

``output`` turns every error into one plain line (or a JSON error object) and holds the
``--verbose`` / ``--quiet`` settings; ``params`` the typed options and cheap checks that run before
a model is loaded; ``common`` the model flags shared by commands; ``state`` what the CLI remembers
between invocations (the active adapters).
"""

from adaptrix_core.cli.app import cli, main

__all__ = ["cli", "main"]
