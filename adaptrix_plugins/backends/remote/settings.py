"""Settings of the ``remote`` backend: ``plugins.remote`` in the configuration, validated here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adaptrix_core.routing.selection import validate_plugin_settings

API_KEY_VARIABLE = "ADAPTRIX_REMOTE_API_KEY"


class RemoteSettings(BaseModel):
    """How the gateway talks to its upstream server (``plugins: {remote: {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(120.0, gt=0, description="Seconds to wait for an answer (or for the next streamed piece).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection.")
    retries: int = Field(3, ge=0, le=20, description="Retries after a refused connection or a 429 / 503 answer.")
    backoff: float = Field(0.5, ge=0, description="First retry delay in seconds; doubled at every further retry.")
    max_backoff: float = Field(20.0, ge=0, description="Longest delay between two tries, Retry-After included.")
    api_key: str | None = Field(None, description=f"Bearer token for the upstream; default: ${API_KEY_VARIABLE}.")
    path_map: dict[str, str] = Field(
        default_factory=dict,
        description="Local folder prefix -> the same folder as the upstream sees it, for load_lora_adapter "
        "(e.g. {'/srv/adapters': '/adapters'} when vLLM mounts the store at /adapters).",
    )
    base_model: str | None = Field(
        None, description="Upstream model id of the base model; default: the first model /v1/models lists without a parent.")
    max_connections: int = Field(32, ge=1, description="Size of the HTTP connection pool (and of a batch's parallel requests).")
    models_ttl: float = Field(5.0, ge=0, description="Seconds the upstream's model list is reused before asking again.")

    @field_validator("path_map")
    @classmethod
    def _absolute_prefixes(cls, value: dict[str, str]) -> dict[str, str]:
        for local, remote in value.items():
            if not local.strip() or not remote.strip():
                raise ValueError("path_map entries need a non-empty local prefix and remote prefix")
        return value

    def resolved_api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The configured key, else ``$ADAPTRIX_REMOTE_API_KEY``, else None (no Authorization header)."""
        environ = os.environ if environ is None else environ
        return self.api_key or environ.get(API_KEY_VARIABLE) or None


def remote_settings(options: Mapping[str, Any] | None) -> RemoteSettings:
    """``plugins.remote`` validated; a bad value is a ``ConfigError`` naming ``plugins.remote.<field>``."""
    return validate_plugin_settings("remote", RemoteSettings, options or {})
