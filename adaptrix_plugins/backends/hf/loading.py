"""Loading a Hugging Face causal LM for the eager backend: device, dtype, GGUF conversion cache."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from adaptrix_core.errors import DeviceNotAvailableError, ModelLoadError
from adaptrix_core.models.source import ModelSource
from adaptrix_plugins.backends.hf.attention import NAME as GQA_ATTENTION
from adaptrix_plugins.backends.hf.attention import use_gqa_attention

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_COMPLETE_MARKER = ".adaptrix-complete"
_CONVERSION_FORMAT = 2  # bump when the conversion changes, so older cached copies are rebuilt


def resolve_device(requested: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise DeviceNotAvailableError(f"{requested!r} is not a device name (use auto, cpu, cuda, cuda:N or mps).") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceNotAvailableError("Device 'cuda' was asked for but no CUDA GPU is available; use device='auto' or 'cpu'.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceNotAvailableError(f"Device {requested!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) found.")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceNotAvailableError("Device 'mps' was asked for but Apple MPS is not available; use device='auto' or 'cpu'.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceNotAvailableError(f"Device type {device.type!r} is not supported (use auto, cpu, cuda or mps).")
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on CPU (fastest there), bfloat16 on GPUs that have it, else float16."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _conversion_folder(source: ModelSource, cache_dir: Path) -> Path:
    import transformers

    gguf_path = (source.path / source.gguf_file).resolve()
    stat = gguf_path.stat()
    key = f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERSION_FORMAT}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    # Keyed by the transformers version: a folder written by one major version can be misread by another.
    return cache_dir / "converted" / f"{gguf_path.stem}-{key}-transformers{transformers.__version__}"


def _detach_gguf_quantizer(model: Any) -> None:
    """A GGUF-loaded model is dequantized already; drop the markers that block save_pretrained."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _apply_gguf_special_tokens(tokenizer: Any, gguf_path: Path) -> None:
    """Take EOS, pad and add-BOS from the GGUF metadata: transformers' GGUF tokenizer gets them wrong
    for some files (SmolLM2: EOS would be <|im_start|>, BOS added to every prompt)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields

    def value(key: str) -> Any:
        field = fields.get(f"tokenizer.ggml.{key}")
        return field.contents() if field is not None else None

    for attribute, key in (("eos_token", "eos_token_id"), ("pad_token", "padding_token_id"), ("bos_token", "bos_token_id")):
        token_id = value(key)
        if token_id is not None and 0 <= int(token_id) < len(tokenizer):
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(token_id)))
    add_bos = value("add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)


def _save_converted(model: Any, tokenizer: Any, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text("ok\n")
        os.replace(staging, folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / _COMPLETE_MARKER).is_file():
            raise


def load_model_and_tokenizer(source: ModelSource, device: torch.device, dtype: torch.dtype, cache_dir: Path):
    """Load (tokenizer, model, weights folder) from local files.

    A GGUF file is converted once and cached as safetensors; the returned folder is that copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = source.path, source.gguf_file
    convert_to = None
    if gguf_file is not None:
        converted = _conversion_folder(source, cache_dir)
        if (converted / _COMPLETE_MARKER).is_file():
            folder, gguf_file = converted, None
        else:
            convert_to = converted
    options: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        options["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **options)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32 if gguf_file else dtype, **options)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"Could not load model {source.model_id!r} from {str(folder)!r}: {exc}") from exc
    if convert_to is not None:
        _apply_gguf_special_tokens(tokenizer, source.path / source.gguf_file)
        _detach_gguf_quantizer(model)
        try:
            _save_converted(model, tokenizer, convert_to)
        except OSError as exc:
            log.warning("Could not cache the converted GGUF model in %s (%s); the next start converts again.", convert_to, exc)
    model.to(device=device, dtype=dtype)
    model.eval()
    if use_gqa_attention(model, device):
        log.debug("Using %s attention (grouped K/V heads stay unexpanded in padded batches).", GQA_ATTENTION)
    weights_path = convert_to if convert_to is not None and (convert_to / _COMPLETE_MARKER).is_file() else folder
    return tokenizer, model, weights_path


def find_layers_path(model: Any, layers_path: str | None, num_layers: int) -> str:
    """The dotted path of the model's block list: the family's, or the first ModuleList of ``num_layers`` blocks."""
    if layers_path is not None:
        node = model
        for part in layers_path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, torch.nn.ModuleList):
            return layers_path
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers and name:
            return name
    raise ModelLoadError(f"Could not find the list of {num_layers} transformer blocks in {type(model).__name__}.")


def safetensors_folder(source: ModelSource, cache_dir: Path) -> Path:
    """A local folder holding ``source`` as safetensors: the model folder itself, or for a GGUF file
    its converted copy in the cache (converted now, once, when missing). Used by other backends
    (the ONNX builder reads this folder)."""
    if source.gguf_file is None:
        return source.path
    converted = _conversion_folder(source, cache_dir)
    if not (converted / _COMPLETE_MARKER).is_file():
        load_model_and_tokenizer(source, torch.device("cpu"), torch.float32, cache_dir)
        if not (converted / _COMPLETE_MARKER).is_file():
            raise ModelLoadError(f"Could not write the converted copy of {source.model_id!r} into {str(converted)!r}; "
                                 "check that the cache folder (cache_dir) is writable.")
    return converted
