"""Adaptrix's metadata for one adapter (``adaptrix.json`` beside the standard PEFT files)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adaptrix_core.errors import AdapterMetadataError, InvalidAdapterNameError

METADATA_FILE = "adaptrix.json"
PEFT_CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Matched with fullmatch: "$" alone would accept a trailing newline. ASCII classes only, so no control
# characters, separators or look-alike letters can get into a folder name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_adapter_name(name: Any) -> str:
    """Adapter names are folder names: letters, digits, '_', '-', '.'; no paths; at most 64 characters."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name) if isinstance(name, str) else f"{type(name).__name__} {name!r}"
        raise InvalidAdapterNameError(
            f"Invalid adapter name {shown[:80]}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit."
        )
    return name


def describe_validation_error(exc: ValidationError) -> str:
    """``field: problem (got value)`` for each problem pydantic found, joined by '; '."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        got = repr(error.get("input"))
        problems.append(f"{where}: {message}" + ("" if error["type"] == "missing" else f" (got {got[:60]})"))
    return "; ".join(problems)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RoutingHints(BaseModel):
    """What routers read to decide when this adapter fits a prompt."""

    model_config = ConfigDict(extra="forbid")

    keywords: list[str] = Field(default_factory=list, description="Words that point to this adapter's task.")
    example_prompts: list[str] = Field(default_factory=list, description="Typical prompts the adapter serves.")


class AdapterMetadata(BaseModel):
    """Everything Adaptrix records about an adapter besides PEFT's own ``adapter_config.json``."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Adapter name, equal to its folder name in the store.")
    version: str = Field("1.0.0", description="Version of this adapter, chosen by its author.")
    description: str = Field("", description="What the adapter does, in a sentence (routers read it).")
    base_model: str | None = Field(None, description="Hub id (or name) of the base model it was trained on.")
    base_fingerprint: dict[str, Any] | None = Field(
        None, description="Fingerprint of the base model's weights it was trained on (see AdapterBackend.fingerprint).")
    family: str | None = Field(None, description="Model family of the base model.")
    target_layers: list[int] | None = Field(None, description="Transformer blocks carrying LoRA; None means all.")
    target_modules: list[str] = Field(default_factory=list, description="Projection names carrying LoRA.")
    rank: int = Field(description="LoRA rank r.")
    alpha: float = Field(description="LoRA alpha (scaling = alpha / r).")
    created_date: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        description="When the adapter was created (ISO 8601, UTC).",
    )
    performance_metrics: dict[str, Any] = Field(
        default_factory=dict, description="Held-out results, e.g. exact_match for adapter and base model."
    )
    routing: RoutingHints = Field(default_factory=RoutingHints, description="Hints for the routers.")
    weights_sha256: str | None = Field(None, description="sha256 of adapter_model.safetensors.")
    training: dict[str, Any] = Field(default_factory=dict, description="How it was trained (data, epochs, seed).")

    def __init__(self, /, **data: Any) -> None:
        """Build metadata; a bad name raises ``InvalidAdapterNameError``, any other bad field ``AdapterMetadataError``."""
        if "name" in data:
            check_adapter_name(data["name"])
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise AdapterMetadataError(f"Invalid adapter metadata: {describe_validation_error(exc)}.") from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> AdapterMetadata:
        """Like pydantic's, but errors are ``InvalidAdapterNameError`` / ``AdapterMetadataError``."""
        if isinstance(obj, dict) and "name" in obj:
            check_adapter_name(obj["name"])
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise AdapterMetadataError(f"Invalid adapter metadata: {describe_validation_error(exc)}.") from None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_adapter_name(value)

    @classmethod
    def from_peft_config(cls, name: str, config: dict[str, Any], **extra: Any) -> AdapterMetadata:
        """Derive metadata from a PEFT ``adapter_config.json`` made elsewhere (checked against its schema first)."""
        from adaptrix_core.adapters.schema import validate_adapter_config

        check_adapter_name(name)
        validate_adapter_config(config)
        targets = config.get("target_modules") or []
        layers = config.get("layers_to_transform")
        values: dict[str, Any] = {
            "name": name,
            "base_model": config.get("base_model_name_or_path"),
            "target_layers": [layers] if isinstance(layers, int) else layers,
            "target_modules": sorted([targets] if isinstance(targets, str) else targets),
            "rank": int(config.get("r", 8)),
            "alpha": float(config.get("lora_alpha", 8)),
        }
        values.update({k: v for k, v in extra.items() if v is not None})
        return cls(**values)
