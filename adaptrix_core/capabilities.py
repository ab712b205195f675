"""The engine's capability checks: one call before using what only some backends can do."""

from __future__ import annotations

from typing import Any

from adaptrix_core.errors import BackendCapabilityError


def require_capability(backend: Any, capability: str, hint: str = "") -> None:
    """Raise ``BackendCapabilityError`` naming the backend and ``capability`` when ``backend`` lacks it.

    ``capability`` is one of the :class:`adaptrix_core.protocols.Capability` names; ``hint`` says
    what to do instead (e.g. which backend has it).
    """
    if capability not in getattr(backend, "capabilities", frozenset()):
        raise BackendCapabilityError(getattr(backend, "name", type(backend).__name__), capability, hint)
