"""The decoding loop on onnxruntime-genai: token ids in (from the HF tokenizer), token ids out.

One ``og.Generator`` runs one batch with one adapter (a generator has one active adapter, so the
backend groups a mixed batch by adapter). Prompts of a batch are right-padded with the pad id -1,
which the model's genai config is given at load: no real token has it, so a prompt that contains
the tokenizer's pad token (SmolLM2 pads with ``<|im_end|>``) is never masked. Stopping is decided
here, per row: an end token, a stop string in the decoded text, or the token budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adaptrix_core.generation.params import GREEDY_TEMPERATURE
from adaptrix_core.types import SamplingParams

PAD_ID = -1
#: genai reads ``random_seed`` as a 32-bit value; larger seeds are folded into that range.
_SEED_RANGE = 2**31 - 1


def sampling(params: SamplingParams) -> bool:
    """Whether to sample: below GREEDY_TEMPERATURE decoding is greedy (as in the hf backend)."""
    return not params.greedy and params.temperature >= GREEDY_TEMPERATURE


def search_options(params: SamplingParams, max_length: int, batch_size: int) -> dict[str, Any]:
    """genai search options for one batch; ``top_k=0`` keeps the whole vocabulary (hf's top_k=0)."""
    options: dict[str, Any] = {"max_length": max_length, "batch_size": batch_size}
    if sampling(params):
        options.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p), top_k=0)
        if params.seed is not None:
            options["random_seed"] = int(params.seed % _SEED_RANGE)
    else:
        options["do_sample"] = False
    if params.ignore_eos:
        options["min_length"] = max_length  # genai masks its end tokens until then, like hf's min_new_tokens
    return options


@dataclass
class Row:
    """One prompt's answer as it is decoded."""

    tokens: list[int]
    ended: bool = False  # an end token was generated (it is not in ``tokens``)
    stopped: bool = False  # a stop string appeared in the text

    @property
    def done(self) -> bool:
        return self.ended or self.stopped


class Decoder:
    """Runs batches and streams on one genai model with the backend's end tokens and tokenizer."""

    def __init__(self, og: Any, model: Any, adapters: Any, end_ids: Sequence[int], decode: Callable[[list[int]], str]):
        self.og, self.model, self.adapters = og, model, adapters
        self.end_ids = set(end_ids)
        self.decode = decode

    def _generator(self, params: SamplingParams, rows: Sequence[Sequence[int]], max_new: int, adapter: str | None) -> Any:
        longest = max(len(ids) for ids in rows)
        options = search_options(params, longest + max_new, len(rows))
        generator_params = self.og.GeneratorParams(self.model)
        generator_params.set_search_options(**options)
        generator = self.og.Generator(self.model, generator_params)
        if adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        padded = np.full((len(rows), longest), PAD_ID, dtype=np.int32)
        for index, ids in enumerate(rows):
            padded[index, : len(ids)] = ids
        generator.append_tokens(padded)
        return generator

    def _advance(self, row: Row, token: int, params: SamplingParams) -> None:
        if token in self.end_ids and not params.ignore_eos:
            row.ended = True
            return
        row.tokens.append(token)
        if params.stop:
            text = self.decode(row.tokens)
            row.stopped = any(stop in text for stop in params.stop)

    def run(self, rows: Sequence[Sequence[int]], params: SamplingParams, max_new: int, adapter: str | None) -> list[Row]:
        """Decode a batch to the end; every row gets at most ``max_new`` tokens."""
        results = [Row([]) for _ in rows]
        generator = self._generator(params, rows, max_new, adapter)
        for _ in range(max_new):
            if generator.is_done():
                break
            generator.generate_next_token()
            for row, token in zip(results, generator.get_next_tokens().tolist()):
                if not row.done:
                    self._advance(row, int(token), params)
            if all(row.done for row in results):
                break
        return results

    def stream(self, ids: Sequence[int], params: SamplingParams, max_new: int, adapter: str | None) -> Iterator[str]:
        """Yield the answer's text in pieces; closing the iterator stops decoding."""
        generator = self._generator(params, [ids], max_new, adapter)
        row, emitted = Row([]), ""
        for _ in range(max_new):
            if generator.is_done():
                break
            generator.generate_next_token()
            self._advance(row, int(generator.get_next_tokens()[0]), params)
            if row.ended:
                break
            text = self.decode(row.tokens)
            if text.endswith("\ufffd") and not row.stopped:
                continue  # an incomplete multi-byte character: wait for the rest
            if text.startswith(emitted) and len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
            if row.stopped:
                break
        text = self.decode(row.tokens)
        if text.startswith(emitted) and len(text) > len(emitted):
            yield text[len(emitted):]
