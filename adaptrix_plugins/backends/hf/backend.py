"""The eager PyTorch backend on Hugging Face transformers: KV cache, left-padded batches, streaming."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, StopStringCriteria, TextIteratorStreamer

from adaptrix_core.config import ModelSettings
from adaptrix_core.errors import ContextOverflowError, EngineClosedError, ModelLoadError
from adaptrix_core.generation.params import GREEDY_TEMPERATURE
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.models.source import ModelSource
from adaptrix_core.protocols import Capability
from adaptrix_core.types import Completion, ModelDescription, SamplingParams
from adaptrix_plugins.backends.hf.loading import (
    find_layers_path,
    load_model_and_tokenizer,
    resolve_device,
    resolve_dtype,
)
from adaptrix_plugins.backends.hf.lora import PeftAdapters


class _StopWhenSet(StoppingCriteria):
    """Ends generation for every row once the event is set (a closed stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _sampling(params: SamplingParams) -> bool:
    """Whether to sample: a temperature below GREEDY_TEMPERATURE decodes greedily (logits / 5e-324 is inf)."""
    return not params.greedy and params.temperature >= GREEDY_TEMPERATURE


def _config_value(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


class HFBackend:
    """Eager transformers backend (``backend="hf"``)."""

    name = "hf"
    capabilities = frozenset({
        Capability.LORA, Capability.LORA_COMPOSITION, Capability.MIXED_ADAPTER_BATCHES, Capability.TRAINING,
        Capability.STREAMING, Capability.MODULE_TREE,
    })

    def __init__(self) -> None:
        self.model: Any = None
        self.tokenizer: Any = None
        self.device: torch.device | None = None
        self.layers_path: str | None = None
        self.eos_token_ids: list[int] = []  # tokens that end an answer: EOS and the family's end-of-turn
        self._description: ModelDescription | None = None
        self._module_names: list[str] = []
        self.lora: PeftAdapters | None = None
        self._unmatchable_stops: set[tuple[str, ...]] = set()
        self._fingerprint: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def load(self, source: ModelSource, settings: ModelSettings, cache_dir: Path) -> ModelDescription:
        if source.kind == "url":
            raise ModelLoadError(f"{source.model_id!r} is a server URL: serve it with backend='remote' (the hf "
                                 "backend loads model files on this machine).")
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, self.device)
        self.tokenizer, self.model, weights_path = load_model_and_tokenizer(source, self.device, dtype, cache_dir)
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ModelLoadError(f"The tokenizer of {source.model_id!r} has neither a pad nor an EOS token.")
            tokenizer.pad_token = tokenizer.eos_token
        config = self.model.config
        self._description = ModelDescription(
            model_type=getattr(config, "model_type", None),
            architectures=tuple(getattr(config, "architectures", None) or (type(self.model).__name__,)),
            num_layers=int(_config_value(config, "num_hidden_layers", "n_layer", "num_layers")),
            hidden_size=int(_config_value(config, "hidden_size", "n_embd", "d_model")),
            vocab_size=int(config.vocab_size),
            max_position_embeddings=_config_value(config, "max_position_embeddings", "n_positions"),
            dtype=str(dtype).removeprefix("torch."),
            device=str(self.device),
            num_parameters=sum(p.numel() for p in self.model.parameters()),
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
            extra={"weights_path": str(weights_path), "attention": config._attn_implementation},
        )
        return self._description

    def bind_family(self, family: ModelFamily) -> None:
        self._require_model()
        self.layers_path = find_layers_path(self.model, family.layers_path, self._description.num_layers)
        eos: list[int] = []
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            eos.extend(source if isinstance(source, list) else [source] if source is not None else [])
        vocab = self.tokenizer.get_vocab()
        eos.extend(vocab[token] for token in family.chat.end_of_turn_tokens if token in vocab)
        self.eos_token_ids = list(dict.fromkeys(eos))
        self._module_names = [name for name, _ in self.model.named_modules() if name]
        self.lora = PeftAdapters(self.model, self.device)

    def memory_report(self) -> dict[str, int]:
        """Bytes of the base weights and of the LoRA weights currently injected."""
        self._require_model()
        lora = sum(p.numel() * p.element_size() for n, p in self.model.named_parameters() if "lora_" in n)
        total = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return {"weights": total - lora, "adapters": lora}

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
        self.lora = None
        self._fingerprint = None
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _require_model(self) -> None:
        if self.model is None:
            raise EngineClosedError("The backend has no model loaded (the engine was cleaned up).")

    # -- text level --------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Mapping[str, str]], template_kwargs: Mapping[str, Any]) -> str:
        self._require_model()
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True, **dict(template_kwargs)
        )

    def count_tokens(self, text: str) -> int:
        self._require_model()
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def module_names(self) -> list[str]:
        self._require_model()
        return list(self._module_names)

    def fingerprint(self) -> dict[str, Any]:
        """What the loaded base model is (see ``hf_fingerprint``); computed once, unchanged by adapters."""
        from adaptrix_plugins.backends.hf.fingerprint import model_fingerprint

        self._require_model()
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.lora.shapes, self.layers_path, self._description)
        return copy.deepcopy(self._fingerprint)

    # -- LoRA adapters (see hf_lora.PeftAdapters) ---------------------------------------------------
    def lora_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of every layer an adapter may target, by module path."""
        self._require_model()
        return dict(self.lora.shapes)

    def inject_lora(self, name: str, config: Mapping[str, Any], weights_file: Path | None = None) -> int:
        """Add adapter ``name`` (fresh when ``weights_file`` is None); return the bytes it takes."""
        self._require_model()
        return self.lora.add(name, config, weights_file)

    def remove_lora(self, name: str) -> None:
        self._require_model()
        self.lora.remove(name)

    def compose_lora(self, name: str, weights: Mapping[str, float]) -> int:
        """Add ``name`` as the weighted sum of loaded adapters; return its bytes."""
        self._require_model()
        return self.lora.compose(name, weights)

    def save_lora(self, name: str, folder: Path, base_model: str) -> Path:
        """Write adapter ``name`` as a PEFT folder inside ``folder``; return the folder written."""
        self._require_model()
        return self.lora.save(name, folder, base_model)

    def train_lora(self, name: str, examples: Sequence[tuple[str, str]], options: Mapping[str, Any], progress: Any = None) -> dict[str, Any]:
        """Train adapter ``name`` on (rendered prompt, response) pairs; return loss figures."""
        from adaptrix_plugins.backends.hf.training import train_lora

        self._require_model()
        return train_lora(self, name, examples, options, progress)

    # -- iteration-level batching (see hf_batching; the StepBatching protocol) -------------------
    def encode_prompt(self, prompt: str, *, templated: bool) -> list[int]:
        """Token ids of one rendered prompt, as ``generate`` feeds them (BOS added unless templated)."""
        self._require_model()
        return self.tokenizer(prompt, add_special_tokens=not templated).input_ids

    def new_step_batch(self) -> Any:
        """An empty running batch (``hf_batching.HFStepBatch``) for the scheduler."""
        from adaptrix_plugins.backends.hf.batching import HFStepBatch

        return HFStepBatch(self)

    # -- generation --------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str], templated: bool) -> Any:
        return self.tokenizer(
            list(prompts), return_tensors="pt", padding=True, add_special_tokens=not templated,
            return_token_type_ids=False,
        ).to(self.device)

    def _generation_config(self, params: SamplingParams, longest_prompt: int) -> GenerationConfig:
        if longest_prompt >= params.max_context:
            raise ContextOverflowError(longest_prompt, params.max_context)
        options: dict[str, Any] = {
            "max_new_tokens": min(params.max_new_tokens, params.max_context - longest_prompt),
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
            "use_cache": True,
            "do_sample": _sampling(params),
        }
        if params.ignore_eos:
            options["min_new_tokens"] = options["max_new_tokens"]
        if _sampling(params):
            options.update(temperature=float(params.temperature), top_p=float(params.top_p), top_k=0)
        if params.stop and self._stops_matchable(params.stop):
            options["stop_strings"] = list(params.stop)
        return GenerationConfig(**options)

    def _stops_matchable(self, stop: tuple[str, ...]) -> bool:
        """Whether any token can end in a stop string; transformers raises ValueError when none can.

        That happens with vocabularies without byte fallback (a stop string of characters the model
        cannot write): then the strings can never be generated and the engine's text-level trimming
        is all that is needed.
        """
        if stop in self._unmatchable_stops:
            return False
        try:
            StopStringCriteria(self.tokenizer, list(stop))  # cached by transformers for the generate call
        except ValueError:
            self._unmatchable_stops.add(stop)
            return False
        return True

    def generate(self, prompts: Sequence[str], params: SamplingParams, *, templated: bool,
                 adapters: Sequence[str | None] | None = None) -> list[Completion]:
        self._require_model()
        inputs = self._encode(prompts, templated)
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        config = self._generation_config(params, max(prompt_lengths))
        if _sampling(params) and params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode(), self.lora.activated(adapters) as (model, extra):
            output = model.generate(
                **inputs, **extra, generation_config=config, tokenizer=self.tokenizer if config.stop_strings else None
            )
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        completions = []
        end_ids, pad_id = set(self.eos_token_ids), self.tokenizer.pad_token_id
        for row, prompt_length in zip(new_tokens, prompt_lengths):
            end = next((i for i, token in enumerate(row) if token in end_ids), None)
            if end is None:  # stopped by length or a stop string; rows that finished early are padded
                kept = row
                while kept and kept[-1] == pad_id:
                    kept = kept[:-1]
            else:
                kept = row[:end]
            completions.append(
                Completion(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    prompt_tokens=int(prompt_length),
                    completion_tokens=len(kept) + (0 if end is None else 1),
                    finish_reason="stop" if end is not None or len(row) < config.max_new_tokens else "length",
                )
            )
        return completions

    def stream(self, prompt: str, params: SamplingParams, *, templated: bool, adapter: str | None = None) -> Iterator[str]:
        self._require_model()
        inputs = self._encode([prompt], templated)
        config = self._generation_config(params, inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        failure: list[BaseException] = []
        if _sampling(params) and params.seed is not None:
            torch.manual_seed(params.seed)

        def pieces() -> Iterator[str]:
            worker = threading.Thread(target=run, name="adaptrix-hf-stream", daemon=True)
            worker.start()
            try:
                for piece in streamer:
                    if piece:
                        yield piece
            finally:
                cancelled.set()
                worker.join()
            if failure:
                raise failure[0]

        def run() -> None:
            try:
                with torch.inference_mode(), self.lora.activated([adapter]) as (model, extra):
                    model.generate(
                        **inputs,
                        **extra,
                        generation_config=config,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(cancelled)]),
                        tokenizer=self.tokenizer if config.stop_strings else None,
                    )
            except BaseException as exc:  # re-raised in the consumer's thread
                failure.append(exc)
                streamer.end()

        return pieces()
