"""Checking a backend's declared capabilities before using them (see ``protocols.Capability``)."""

from __future__ import annotations

from typing import Any

from adaptrix_core.errors import BackendCapabilityError


def has_capability(backend: Any, capability: str) -> bool:
    """Whether ``backend`` declares ``capability`` in its ``capabilities``."""
    return capability in getattr(backend, "capabilities", frozenset())


def require_capability(backend: Any, capability: str, hint: str = "") -> None:
    """Raise ``BackendCapabilityError`` naming the backend and the capability when it is missing."""
    if not has_capability(backend, capability):
        raise BackendCapabilityError(getattr(backend, "name", type(backend).__name__), capability, hint)
