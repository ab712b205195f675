"""The quantized ONNX backend (``backend="onnx"``): onnxruntime-genai on CPU with runtime LoRA.

``load`` reads the model's config and HF tokenizer (a GGUF model is converted to safetensors once,
as the ``hf`` backend does); ``bind_family`` works out the LoRA slots, builds the graph into the
cache on first use (``build.py``) and opens it. Text is tokenized with the HF tokenizer of the
model folder and token ids are fed to genai (genai's own tokenizer misreads GGUF-converted
tokenizer files). Adapters are served as ``.onnx_adapter`` files (``lora.py``), one per generator:
a batch that mixes adapters runs as one batch per adapter. Training is not supported here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adaptrix_core.config import ModelSettings
from adaptrix_core.errors import (
    AdapterIncompatibleError,
    BackendCapabilityError,
    ConfigError,
    ContextOverflowError,
    DeviceNotAvailableError,
    EngineClosedError,
    ModelLoadError,
)
from adaptrix_core.models.families import ModelFamily
from adaptrix_core.models.source import ModelSource
from adaptrix_core.protocols import Capability
from adaptrix_core.types import Completion, ModelDescription, SamplingParams
from adaptrix_plugins.backends.onnx import lora
from adaptrix_plugins.backends.onnx.adapters import OnnxAdapters
from adaptrix_plugins.backends.onnx.build import read_json
from adaptrix_plugins.backends.onnx.graphs import Graph, open_graph
from adaptrix_plugins.backends.onnx.settings import OnnxSettings, read_settings
from adaptrix_plugins.backends.onnx.slots import resolve_slots

_TRAINING_HINT = "Train with backend='hf' (the adapter is saved to the store), then serve it here."


def weight_shapes(folder: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """``(in, out)`` of every 2-D weight by module path, and the parameter count, from safetensors headers."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{str(folder)!r} has no safetensors weights; the onnx backend builds only from "
                             "safetensors (pickle checkpoints are never read). Re-save the model with safe_serialization=True.")
    shapes, total = {}, 0
    for path in files:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for key in handle.keys():
                    shape = handle.get_slice(key).get_shape()
                    total += int(math.prod(shape))
                    if len(shape) == 2 and key.endswith(".weight"):
                        shapes[key.removesuffix(".weight")] = (int(shape[1]), int(shape[0]))
        except Exception as exc:  # safetensors raises its own SafetensorError on a damaged file
            raise ModelLoadError(f"Could not read the weights {str(path)!r}: {exc}") from None
    return shapes, total


class OnnxBackend:
    """onnxruntime-genai backend with an int4/int8/fp32 graph built on first use (``backend="onnx"``)."""

    name = "onnx"
    capabilities = frozenset({Capability.LORA, Capability.LORA_COMPOSITION, Capability.STREAMING})
    layers_path: str | None = None

    def __init__(self) -> None:
        self.settings = OnnxSettings()
        self.progress: Callable[[str, int, int], None] | None = None  # build progress; None: a bar on a terminal
        self._store: str | None = None
        self._cache_dir: Path | None = None
        self._folder: Path | None = None
        self._source: ModelSource | None = None
        self.tokenizer: Any = None
        self._config: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, int]] = {}
        self._description: ModelDescription | None = None
        self.slots: list[str] = []
        self.end_ids: list[int] = []
        self._base: Graph | None = None  # serves requests without an adapter
        self._adapted: Graph | None = None  # serves requests with one (the same graph when precisions agree)

    # -- lifecycle ---------------------------------------------------------------------------
    def configure(self, config: Any) -> None:
        """Read ``plugins.onnx`` (and the adapter store's location) from the engine's configuration."""
        self.settings = read_settings(getattr(config, "plugins", None))
        self._store = config.adapters.directory

    def load(self, source: ModelSource, settings: ModelSettings, cache_dir: Path) -> ModelDescription:
        if settings.device not in ("auto", "cpu"):
            raise DeviceNotAvailableError(f"The onnx backend runs on the CPU; device {settings.device!r} is not "
                                          "available to it. Use device='cpu' (or 'auto'), or backend='hf' for a GPU.")
        if settings.dtype not in ("auto", "float32"):
            raise ConfigError(f"model.dtype {settings.dtype!r} does not apply to the onnx backend; choose the weight "
                              "precision with plugins.onnx.precision (int4, int8 or fp32).")
        self._source, self._cache_dir = source, cache_dir
        folder = source.path
        if source.gguf_file is not None:  # converted once into the cache by the hf backend's code (imports torch)
            from adaptrix_plugins.backends.hf.loading import safetensors_folder

            folder = safetensors_folder(source, cache_dir)
        self._config = read_json(folder / "config.json")
        if not self._config:
            raise ModelLoadError(f"{str(folder)!r} has no config.json; the onnx backend needs a Hugging Face model folder.")
        self._shapes, parameters = weight_shapes(folder)
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"Could not load the tokenizer of {source.model_id!r} from {str(folder)!r}: {exc}") from exc
        self._folder = folder
        config = self._config
        precision = self.settings.precision
        self._description = ModelDescription(
            model_type=config.get("model_type"),
            architectures=tuple(config.get("architectures") or ()),
            num_layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
            hidden_size=int(config.get("hidden_size") or config.get("n_embd") or 0),
            vocab_size=int(config.get("vocab_size") or len(self.tokenizer)),
            max_position_embeddings=config.get("max_position_embeddings") or config.get("n_positions"),
            dtype="float32" if precision == "fp32" else precision,
            device="cpu",
            num_parameters=parameters,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            extra={"weights_path": str(folder), "precision": precision},
        )
        return self._description

    def bind_family(self, family: ModelFamily) -> None:
        """Work out the LoRA slots, build the graph(s) (or reuse the cached ones) and open them."""
        self._require_tokenizer()
        self.end_ids = self._end_ids(family)
        self.slots = resolve_slots(self.settings, family, self._description.num_layers, self._shapes, self._store)
        progress = self.progress or _default_progress()
        base, adapted = self.settings.precision, self.settings.adapted_precision
        common = {"model_folder": self._folder, "cache_dir": self._cache_dir, "shapes": self._shapes,
                  "num_layers": self._description.num_layers, "end_ids": self.end_ids, "decode": self._decode,
                  "threads": self.settings.threads, "build_threads": self.settings.build_threads}
        if adapted == base or not self.slots:
            self._base = self._adapted = open_graph(base, self.slots, progress=_staged(progress, base), **common)
        else:  # only the graph that serves adapters needs LoRA inputs (and the unfused q/k/v they take)
            self._base = open_graph(base, [], progress=_staged(progress, base), **common)
            self._adapted = open_graph(adapted, self.slots, progress=_staged(progress, adapted), **common)
        graphs = self._graphs()
        self._description.extra.update({
            "precision": base, "adapter_precision": self._adapted.precision,
            "onnx_path": str(self._base.folder), "onnx_adapter_path": str(self._adapted.folder),
            "onnx_build": "built" if any(g.built for g in graphs) else "cached",
            "onnx_build_seconds": sum(g.manifest.get("build_seconds") or 0 for g in graphs),
            "lora_slots": lora.describe_slots(self.slots),
            "onnxruntime_genai": self._base.manifest.get("versions", {}).get("onnxruntime-genai"),
        })

    def _graphs(self) -> list[Graph]:
        return [self._base] if self._adapted is self._base else [self._base, self._adapted]

    @property
    def adapters(self) -> OnnxAdapters | None:
        """The adapters loaded into the graph that serves adapted requests (None without LoRA slots)."""
        return self._adapted.adapters if self._adapted is not None else None

    def export(self, family: ModelFamily, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Build (or find) the graph(s) ahead of time; return where they are and what they hold."""
        self.progress = progress
        self.bind_family(family)
        size = sum(sum(f.stat().st_size for f in g.folder.iterdir() if f.is_file()) for g in self._graphs())
        extra = self._description.extra
        return {"path": extra["onnx_path"], "adapter_path": extra["onnx_adapter_path"], "precision": extra["precision"],
                "adapter_precision": extra["adapter_precision"], "bytes": size,
                **{k: extra[k] for k in ("onnx_build", "onnx_build_seconds", "lora_slots")}}

    def _end_ids(self, family: ModelFamily) -> list[int]:
        """EOS of the generation config and tokenizer plus the family's end-of-turn tokens (as in ``hf``)."""
        ids: list[int] = []
        generation = read_json(self._folder / "generation_config.json").get("eos_token_id")
        for value in (generation, self._config.get("eos_token_id"), self.tokenizer.eos_token_id):
            ids.extend(value if isinstance(value, list) else [value] if value is not None else [])
        vocab = self.tokenizer.get_vocab()
        ids.extend(vocab[token] for token in family.chat.end_of_turn_tokens if token in vocab)
        return [int(i) for i in dict.fromkeys(ids)]

    def memory_report(self) -> dict[str, int]:
        """Bytes of the graphs' weight files and of the loaded adapters' matrices."""
        self._require_model()
        adapters = self.adapters.total_bytes() if self.adapters is not None else 0
        return {"weights": sum(g.weight_bytes() for g in self._graphs()), "adapters": adapters}

    def close(self) -> None:
        self._base = self._adapted = None
        self.tokenizer = None

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise EngineClosedError("The backend has no model loaded (the engine was cleaned up).")

    def _require_model(self) -> None:
        if self._base is None:
            raise EngineClosedError("The backend has no model loaded (the engine was cleaned up).")

    def _require_adapters(self, name: str) -> OnnxAdapters:
        self._require_model()
        if self.adapters is None:
            raise AdapterIncompatibleError(name, [
                "The built ONNX graph has no LoRA slots (plugins.onnx.lora_modules is empty). Set "
                "plugins.onnx.lora_modules / lora_layers, or clear them to take the slots from the store, "
                "and rebuild with `adaptrix export onnx`."])
        return self.adapters

    # -- text level --------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Mapping[str, str]], template_kwargs: Mapping[str, Any]) -> str:
        self._require_tokenizer()
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                                  **dict(template_kwargs))

    def count_tokens(self, text: str) -> int:
        self._require_tokenizer()
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def module_names(self) -> list[str]:
        return []  # no module tree: the graph is not a torch model

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # -- LoRA adapters -----------------------------------------------------------------------
    def lora_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every linear layer of the model; only the built slots accept adapters (see inject_lora)."""
        self._require_model()
        return dict(self._shapes)

    def inject_lora(self, name: str, config: Mapping[str, Any], weights_file: Path | None = None) -> int:
        """Load adapter ``name`` from a PEFT folder's files (converted once into the cache); return its bytes."""
        if weights_file is None:
            raise BackendCapabilityError(self.name, Capability.TRAINING,
                                         "A fresh adapter needs training; create and train it with backend='hf'.")
        return self._require_adapters(name).add(name, config, weights_file)

    def remove_lora(self, name: str) -> None:
        self._require_adapters(name).remove(name)

    def compose_lora(self, name: str, weights: Mapping[str, float]) -> int:
        """Add ``name`` as the weighted mix of loaded adapters (ranks concatenated); return its bytes."""
        return self._require_adapters(name).compose(name, weights)

    def save_lora(self, name: str, folder: Path, base_model: str) -> Path:
        raise BackendCapabilityError(self.name, Capability.TRAINING, _TRAINING_HINT)

    def train_lora(self, name: str, examples: Sequence[tuple[str, str]], options: Mapping[str, Any],
                   progress: Any = None) -> dict[str, Any]:
        raise BackendCapabilityError(self.name, Capability.TRAINING, _TRAINING_HINT)

    # -- generation --------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str], templated: bool) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=not templated).input_ids]

    def _budget(self, params: SamplingParams, longest: int, graph: Graph) -> int:
        if longest >= params.max_context:
            raise ContextOverflowError(longest, params.max_context)
        budget = min(params.max_new_tokens, params.max_context - longest)
        if graph.context_length:  # the graph's own limit, when the configured window is larger
            if longest >= graph.context_length:
                raise ContextOverflowError(longest, graph.context_length)
            budget = min(budget, graph.context_length - longest)
        return budget

    def _route(self, adapter: str | None) -> tuple[Graph, str | None]:
        """The graph that serves ``adapter`` and the adapter's genai name there."""
        if adapter is None:
            return self._base, None
        return self._adapted, self._require_adapters(adapter).internal(adapter)

    def generate(self, prompts: Sequence[str], params: SamplingParams, *, templated: bool,
                 adapters: Sequence[str | None] | None = None) -> list[Completion]:
        self._require_model()
        rows = self._encode(prompts, templated)
        wanted = list(adapters) if adapters is not None else [None] * len(rows)
        groups: dict[str | None, list[int]] = {}
        for index, adapter in enumerate(wanted):
            groups.setdefault(adapter, []).append(index)
        longest = max(len(ids) for ids in rows)
        completions: list[Completion | None] = [None] * len(rows)
        for adapter, indices in groups.items():
            graph, internal = self._route(adapter)
            max_new = self._budget(params, longest, graph)  # the whole call's longest prompt, as in hf
            results = graph.decoder.run([rows[i] for i in indices], params, max_new, internal)
            for index, row in zip(indices, results):
                completions[index] = Completion(
                    text=self._decode(row.tokens), prompt_tokens=len(rows[index]),
                    completion_tokens=len(row.tokens) + (1 if row.ended else 0),
                    finish_reason="stop" if row.done else "length")
        return completions

    def stream(self, prompt: str, params: SamplingParams, *, templated: bool, adapter: str | None = None) -> Iterator[str]:
        self._require_model()
        ids = self._encode([prompt], templated)[0]
        graph, internal = self._route(adapter)
        return graph.decoder.stream(ids, params, self._budget(params, len(ids), graph), internal)


def _staged(progress: Callable[[str, int, int], None] | None, precision: str) -> Callable[[str, int, int], None] | None:
    """Prefix each stage with the graph's precision (two graphs may be built one after the other)."""
    if progress is None:
        return None
    return lambda stage, done, total: progress(f"{precision}: {stage}", done, total)


def _default_progress() -> Callable[[str, int, int], None] | None:
    """A text progress bar on stderr when it is a terminal (the first build takes seconds to minutes)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def report(stage: str, done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc="Building the ONNX model", unit="step", leave=False, file=sys.stderr)
        bar["bar"].set_postfix_str(stage)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar.pop("bar").close()

    return report
