"""Iteration-level batching on the HF backend: rows join a running batch and leave it between steps.

This is text-generation-inference's first Python server (``CausalLMBatch.concatenate`` /
``filter``) on transformers 4.57's ``DynamicCache``, with one peft adapter per row:

* every row's cached keys/values are right-aligned: a batch of ``T`` slots holds each row's tokens
  in its last slots and zeros (masked out by the 2-D attention mask) in front;
* a decode step feeds each row's last sampled token at slot ``T`` with the row's own position id
  (its count of real tokens, as ``generate`` computes from a left-padded mask), so every row sees
  exactly the keys, values and rotary positions it would see alone;
* new rows are prefilled together (left-padded) in a cache of their own, then padded on the left
  (or the running batch is) to the longer length and concatenated along the batch dimension;
* rows that finish are dropped with ``index_select`` and the padding every remaining row has in
  front is cut off, so the cache never grows beyond the longest live row.

The cache is a plain ``DynamicCache`` (full layers, no sliding-window layers): sliding-window
models (Gemma 2/3) get the window from their attention masks, which transformers builds from the
slot positions, and slot distance equals token distance for right-aligned rows.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from adaptrix_core.errors import ContextOverflowError
from adaptrix_core.protocols import StepOutput, StepRow
from adaptrix_core.types import SamplingParams


@dataclass
class _Row:
    key: str
    prompt_tokens: int
    params: SamplingParams
    adapter: str | None
    max_new: int
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)


def _left_pad(tensor: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    if count == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = count
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class HFStepBatch:
    """A running batch on an ``HFBackend`` (see the module docstring); implements ``StepBatch``."""

    def __init__(self, backend: Any) -> None:
        backend._require_model()
        self.backend = backend
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, slots) 1 for real tokens, 0 for padding
        self.next_tokens: torch.Tensor | None = None  # (rows,) sampled, not yet fed
        self.positions: torch.Tensor | None = None  # (rows,) position id of next_tokens
        self._eos = list(backend.eos_token_ids)
        forward = backend.model.forward
        self._logits_to_keep = "logits_to_keep" in inspect.signature(forward).parameters

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> list[str]:
        return [row.key for row in self.rows]

    # -- the StepBatch surface ------------------------------------------------------------------
    def add(self, rows: Sequence[StepRow]) -> list[StepOutput]:
        """Prefill ``rows`` as one left-padded batch, sample their first tokens, merge them in."""
        if not rows:
            return []
        device = self.backend.device
        new = [self._new_row(spec) for spec in rows]
        length = max(len(spec.token_ids) for spec in rows)
        pad_id = self.backend.tokenizer.pad_token_id
        with torch.inference_mode():
            input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(rows), length), dtype=torch.long, device=device)
            for index, spec in enumerate(rows):
                input_ids[index, length - len(spec.token_ids):] = torch.tensor(spec.token_ids, device=device)
                mask[index, length - len(spec.token_ids):] = 1
            position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate() computes them
            cache = DynamicCache()
            logits = self._forward(input_ids, mask, position_ids, torch.arange(length, device=device), cache,
                                   [row.adapter for row in new])
            keep = mask[:, None, :, None].to(cache.layers[0].keys.dtype)
            for layer in cache.layers:  # padded slots hold whatever attention made of nothing: make them 0
                layer.keys.mul_(keep)
                layer.values.mul_(keep)
            tokens = self._sample(logits, new)
            self._merge(new, cache, mask, tokens, mask.sum(-1))
            return self._advance(new, tokens.tolist())

    def step(self) -> list[StepOutput]:
        """One decode step for every row."""
        if not self.rows:
            return []
        device = self.backend.device
        with torch.inference_mode():
            slots = self.mask.shape[1]
            mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
            logits = self._forward(self.next_tokens[:, None], mask, self.positions[:, None],
                                   torch.tensor([slots], device=device), self.cache, [row.adapter for row in self.rows])
            self.mask = mask
            self.positions = self.positions + 1
            tokens = self._sample(logits, self.rows)
            self.next_tokens = tokens
            return self._advance(list(self.rows), tokens.tolist())

    def remove(self, keys: Iterable[str]) -> None:
        """Drop the rows named by ``keys``."""
        gone = set(keys)
        if gone & {row.key for row in self.rows}:
            with torch.inference_mode():
                self._filter([i for i, row in enumerate(self.rows) if row.key not in gone])

    # -- internals ----------------------------------------------------------------------------
    def _new_row(self, spec: StepRow) -> _Row:
        params = spec.params
        prompt_tokens = len(spec.token_ids)
        if prompt_tokens >= params.max_context:
            raise ContextOverflowError(prompt_tokens, params.max_context)
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.backend.device)
            generator.manual_seed(params.seed if params.seed is not None else random.SystemRandom().getrandbits(63))
        max_new = min(params.max_new_tokens, params.max_context - prompt_tokens)
        return _Row(spec.key, prompt_tokens, params, spec.adapter, max_new, generator)

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                 cache_position: torch.Tensor, cache: DynamicCache, adapters: list[str | None]) -> torch.Tensor:
        options: dict[str, Any] = {"logits_to_keep": 1} if self._logits_to_keep else {}
        with self.backend.lora.activated(adapters) as (model, extra):
            output = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                           past_key_values=cache, cache_position=cache_position, use_cache=True,
                           **options, **extra)
        return output.logits[:, -1, :].to(torch.float32)

    def _sample(self, logits: torch.Tensor, rows: Sequence[_Row]) -> torch.Tensor:
        suppress = [i for i, row in enumerate(rows) if row.params.ignore_eos]
        if suppress and self._eos:
            rows_index = torch.tensor(suppress, device=logits.device)[:, None]
            logits[rows_index, torch.tensor(self._eos, device=logits.device)[None, :]] = float("-inf")
        tokens = logits.argmax(dim=-1)
        for index, row in enumerate(rows):
            if row.generator is not None:
                tokens[index] = _draw(logits[index], row.params, row.generator)
        return tokens

    def _advance(self, rows: list[_Row], tokens: list[int]) -> list[StepOutput]:
        """Record each row's new token; finished rows (end token, length) leave the batch."""
        decode = self.backend.tokenizer.decode
        outputs, finished = [], set()
        for row, token in zip(rows, tokens):
            row.generated.append(token)
            reason = None
            kept = row.generated
            if token in self._eos and not row.params.ignore_eos:
                reason, kept = "stop", row.generated[:-1]
            elif len(row.generated) >= row.max_new:
                reason = "length"
            outputs.append(StepOutput(row.key, decode(kept, skip_special_tokens=True), row.prompt_tokens,
                                      len(row.generated), reason))
            if reason is not None:
                finished.add(row.key)
        if finished:
            self._filter([i for i, row in enumerate(self.rows) if row.key not in finished])
        return outputs

    def _merge(self, new: list[_Row], cache: DynamicCache, mask: torch.Tensor, tokens: torch.Tensor,
               positions: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.next_tokens, self.positions = new, cache, mask, tokens, positions
            return
        ours, theirs = self.mask.shape[1], mask.shape[1]
        slots = max(ours, theirs)
        for layer, other in zip(self.cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, slots - ours, 2), _left_pad(other.keys, slots - theirs, 2)])
            layer.values = torch.cat([_left_pad(layer.values, slots - ours, 2),
                                      _left_pad(other.values, slots - theirs, 2)])
        self.mask = torch.cat([_left_pad(self.mask, slots - ours, 1), _left_pad(mask, slots - theirs, 1)])
        self.next_tokens = torch.cat([self.next_tokens, tokens])
        self.positions = torch.cat([self.positions, positions])
        self.rows = self.rows + new

    def _filter(self, keep: list[int]) -> None:
        if not keep:
            self.rows, self.cache, self.mask, self.next_tokens, self.positions = [], None, None, None, None
            return
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())  # padding every remaining row has in front
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.next_tokens = self.next_tokens.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.rows = [self.rows[i] for i in keep]


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Sample one token as ``generate`` does: temperature, then top-p (nucleus), from the row's generator."""
    scores = logits / params.temperature
    if params.top_p < 1:
        ordered, order = torch.sort(scores)  # ascending, like transformers' TopPLogitsWarper
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - params.top_p
        drop[-1] = False  # always keep the most likely token
        scores = scores.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    probabilities = scores.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator)[0]

