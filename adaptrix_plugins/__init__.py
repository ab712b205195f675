"""Adaptrix's built-in plugins: model families, backends and routers.

They are registered through the ``adaptrix`` entry-point group in ``pyproject.toml``, exactly as a
third-party package registers its own.
"""
