"""``plugins.onnx`` in the config: precision, LoRA slots, threads (validated by :class:`OnnxSettings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adaptrix_core.routing.selection import validate_plugin_settings

PLUGIN_NAME = "onnx"
PRECISIONS = ("int4", "int8", "fp32")


class OnnxSettings(BaseModel):
    """Settings of the ``onnx`` backend, read from ``plugins.onnx``.

    Requests without an adapter run on the ``precision`` graph; requests with one run on the
    ``adapted_precision`` graph (int8 by default next to int4: on the demo adapters' held-out sets
    int4 lost up to 20 points of accuracy, int8 none). When the two differ, two graphs are built and
    loaded, and only the adapted one has LoRA inputs.

    LoRA slots are the (block, projection) pairs whose weights are graph inputs, so that adapters
    can be switched per request. With neither ``lora_modules`` nor ``lora_layers`` set they are the
    family's default targets in its middle blocks plus every (block, projection) that an adapter in
    the store targets. Setting either one fixes the slots to ``lora_modules`` x ``lora_layers`` (the
    unset one takes the family default); ``lora_modules: []`` builds a graph without LoRA.
    """

    model_config = ConfigDict(extra="forbid")

    precision: Literal["int4", "int8", "fp32"] = Field(
        "int4", description="Weight precision of the graph: int4 (fastest, smallest), int8, or fp32 (exact).")
    adapter_precision: Literal["int4", "int8", "fp32"] | None = Field(
        None, description="Precision of the graph that serves requests with an adapter; None: int8 when precision "
        "is int4 (int4 loses too much task accuracy with the demo adapters), else the same as precision.")
    lora_modules: list[str] | None = Field(
        None, description="Projections that get LoRA inputs, e.g. [q_proj, v_proj]; None: from the store and family.")
    lora_layers: Literal["middle", "quartiles", "all"] | list[int] | None = Field(
        None, description="Blocks that get LoRA inputs: a preset or indices; None: from the store and family.")
    build_threads: int | None = Field(None, gt=0, description="CPU threads for building the graph; None: torch's default.")
    threads: int | None = Field(None, gt=0, description="CPU threads for generation; None: every core the process may use.")

    @property
    def adapted_precision(self) -> str:
        """The precision that serves requests with an adapter."""
        if self.adapter_precision is not None:
            return self.adapter_precision
        return "int8" if self.precision == "int4" else self.precision

    @property
    def explicit_slots(self) -> bool:
        """True when the configuration fixes the slots instead of deriving them from the store."""
        return self.lora_modules is not None or self.lora_layers is not None


def read_settings(plugins: Mapping[str, Any] | None) -> OnnxSettings:
    """``plugins.onnx`` of a config's ``plugins`` mapping, validated (``ConfigError`` naming the field)."""
    return validate_plugin_settings(PLUGIN_NAME, OnnxSettings, dict((plugins or {}).get(PLUGIN_NAME) or {}))
