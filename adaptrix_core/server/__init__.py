"""The HTTP server of ``adaptrix serve``: native REST endpoints and an OpenAI-compatible API.

``create_app(engine=None, settings=None)`` builds the FastAPI app (see :mod:`.app`); routes live
in :mod:`.native`, :mod:`.uploads` and :mod:`.openai_api`, error shapes in :mod:`.errors`, and
Prometheus metrics in :mod:`.metrics`.
"""

from __future__ import annotations

from typing import Any


def create_app(engine: Any = None, settings: Any = None):
    """Build the Adaptrix FastAPI app (imports FastAPI on first use); see :func:`.app.create_app`."""
    from adaptrix_core.server.app import create_app as _create_app

    return _create_app(engine, settings)


__all__ = ["create_app"]
