"""SDPA attention for grouped-query models on CPU that keeps the K/V heads unexpanded under a padding mask.

transformers' ``sdpa`` attention passes ``enable_gqa=True`` to
``torch.nn.functional.scaled_dot_product_attention`` only when there is no attention mask; with one
(any left-padded batch) it first copies every layer's cached keys and values
``num_attention_heads / num_key_value_heads`` times, on every decode step. On CPU, PyTorch's SDPA
takes the mask and the grouped heads together, so this variant always passes ``enable_gqa`` and
skips the copy; it builds the same masks as ``sdpa`` (``sdpa_mask``). It is registered with
transformers' ``AttentionInterface`` and ``AttentionMaskInterface`` under :data:`NAME` and only
used for CPU models whose config asks for ``sdpa`` and has fewer K/V heads than query heads.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "adaptrix_sdpa_gqa"
_registered = False


def sdpa_gqa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, sdpa_gqa_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True


def use_gqa_attention(model: Any, device: torch.device) -> bool:
    """Switch a CPU ``sdpa`` model with grouped K/V heads to :data:`NAME`; True when switched."""
    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None)
    if device.type != "cpu" or config._attn_implementation != "sdpa" or not heads or not kv_heads or kv_heads >= heads:
        return False
    if not getattr(model, "_supports_attention_backend", False):
        return False
    _register()
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
