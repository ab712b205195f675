"""Building the ONNX graph of a model with onnxruntime-genai's model builder, into a keyed cache.

The builder runs offline on a folder of safetensors weights (for a GGUF model, the converted copy
the ``hf`` backend makes: see ``adaptrix_plugins.backends.hf.loading.safetensors_folder``). The result lands in
``<cache_dir>/onnx/<model>-<precision>-<key>/``, where the key covers the model's files (content
hash of its config and tokenizer files, size and modification time of its weights), the precision,
the LoRA slots, and the versions of onnxruntime-genai, onnxruntime, onnx and transformers. A build
is made in a temporary folder next to it and renamed into place once complete, so a failed or
interrupted build never leaves a half-written model where a later start would use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from adaptrix_core.errors import ModelLoadError
from adaptrix_core.jsonio import write_json_atomic
from adaptrix_plugins.backends.onnx.lora import add_lora_inputs

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as the build advances (stage is a short phrase)."""

BUILD_FORMAT = 1  # bump when the build or the graph edit changes, so cached graphs are rebuilt
MANIFEST = "adaptrix-onnx.json"  # written last: its presence marks a complete build
_FINGERPRINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "chat_template.jinja")
_STALE_STAGING_SECONDS = 6 * 3600
_QKV = ("q_proj", "k_proj", "v_proj")


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape the built graph (part of the cache key)."""
    versions = {}
    for name in ("onnxruntime-genai", "onnxruntime", "onnx", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_fingerprint(folder: Path) -> str:
    """Identifies a model folder's contents: small files by content, weights by size and mtime."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for name in _FINGERPRINT_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    for path in sorted(folder.glob("*.safetensors")):
        stat = path.stat()
        digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def build_folder(cache_dir: Path, model_folder: Path, precision: str, slots: Sequence[str],
                 options: Mapping[str, str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Where the graph for these inputs lives in the cache, and the key fields recorded in its manifest."""
    fields = {"model": model_fingerprint(model_folder), "precision": precision, "slots": sorted(slots),
              "options": dict(sorted((options or {}).items())), "versions": library_versions(), "format": BUILD_FORMAT}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model_folder.name)[:48]
    return cache_dir / "onnx" / f"{name}-{precision}-{key}", {**fields, "key": key}


def is_complete(folder: Path) -> bool:
    """A folder renamed into place after a finished build (its manifest written last)."""
    return (folder / MANIFEST).is_file() and (folder / "model.onnx").is_file() and (folder / "genai_config.json").is_file()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of a model or build folder; ``ModelLoadError`` when it is unreadable, {} when absent."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"Could not read {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{str(path)!r} does not hold a JSON object.")
    return data


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a complete build (empty when unreadable)."""
    try:
        return read_json(folder / MANIFEST)
    except ModelLoadError:
        return {}


def ensure_built(model_folder: Path, cache_dir: Path, precision: str, slots: Sequence[str],
                 shapes: Mapping[str, tuple[int, int]], num_layers: int, progress: Progress | None = None,
                 build_threads: int | None = None, options: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The folder of the built graph, building it when the cache has none; returns (folder, built now).

    ``options`` are extra options of the model builder (``key=value`` strings, e.g. ``block_size``).
    """
    target, fields = build_folder(cache_dir, model_folder, precision, slots, options)
    if is_complete(target):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    started = time.perf_counter()
    try:
        unfuse = any(module.rsplit(".", 1)[-1] in _QKV for module in slots)
        _run_builder(model_folder, staging, precision, unfuse, num_layers, progress, build_threads, options)
        if slots:
            _report(progress, "LoRA slots", num_layers + 2, num_layers + 3)
            add_lora_inputs(staging / "model.onnx", slots, shapes)
        seconds = round(time.perf_counter() - started, 2)
        write_json_atomic(staging / MANIFEST, {**fields, "source": str(model_folder), "build_seconds": seconds,
                                               "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        staging.chmod(0o755)
        try:
            os.replace(staging, target)
        except OSError:
            if not is_complete(target):  # not another process's finished build: a real failure
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return target, False
        _report(progress, "done", num_layers + 3, num_layers + 3)
        log.info("built the %s ONNX graph of %s in %.1f s into %s", precision, model_folder, seconds, target)
        return target, True
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _remove_stale_staging(root: Path) -> None:
    """Delete temporary build folders left by interrupted builds (older than a few hours)."""
    now = time.time()
    for path in root.glob(".*.staging-*"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > _STALE_STAGING_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Undo root-logger changes made inside (onnxruntime's quantizer calls logging.basicConfig on import)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


class _BuilderOutput(io.TextIOBase):
    """Receives the builder's printed lines: turns them into progress calls and keeps the last few."""

    def __init__(self, progress: Progress | None, num_layers: int, precision: str):
        self.progress, self.num_layers, self.precision = progress, num_layers, precision
        self.lines: list[str] = []
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *complete, self._partial = re.split(r"[\r\n]", self._partial)
        for line in complete:
            self._line(line.strip())
        return len(text)

    def _line(self, line: str) -> None:
        if not line:
            return
        self.lines = (self.lines + [line])[-20:]
        layer = re.match(r"Reading layer (\d+)", line)
        total = self.num_layers + 3
        if layer:
            _report(self.progress, "reading weights", int(layer[1]) + 1, total)
        elif line.startswith("Saving ONNX model"):
            stage = "quantizing and saving" if self.precision in ("int4", "int8") else "saving"
            _report(self.progress, stage, self.num_layers + 1, total)


def _run_builder(model_folder: Path, out: Path, precision: str, unfuse_qkv: bool, num_layers: int,
                 progress: Progress | None, build_threads: int | None, extra: Mapping[str, str] | None = None) -> None:
    """Run ``onnxruntime_genai.models.builder`` in this process with its printing captured."""
    import torch

    with _root_logging_kept():
        from onnxruntime_genai.models import builder

    options: dict[str, Any] = {"hf_token": "false", **(extra or {})}
    if unfuse_qkv:
        options["disable_qkv_fusion"] = "true"  # separate q/k/v MatMuls, so each can take a LoRA update
    output = _BuilderOutput(progress, num_layers, precision)
    _report(progress, "reading weights", 0, num_layers + 3)
    previous_threads = torch.get_num_threads()
    cache = out / ".builder-cache"
    try:
        if build_threads:
            torch.set_num_threads(build_threads)
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()), _root_logging_kept():
            builder.check_extra_options(None, str(model_folder), str(out), precision, "cpu", str(cache), options)
            builder.create_model(None, str(model_folder), str(out), precision, "cpu", str(cache), **options)
    except NotImplementedError as exc:
        raise ModelLoadError(f"The ONNX model builder cannot build {str(model_folder)!r}: {exc} Use backend='hf'.") from None
    except Exception as exc:
        tail = " | ".join(output.lines[-3:])
        raise ModelLoadError(f"Building the {precision} ONNX graph of {str(model_folder)!r} failed: "
                             f"{type(exc).__name__}: {exc}" + (f" (builder output: {tail})" if tail else "")) from exc
    finally:
        torch.set_num_threads(previous_threads)
        shutil.rmtree(cache, ignore_errors=True)
    if not (out / "model.onnx").is_file() or not (out / "genai_config.json").is_file():
        raise ModelLoadError(f"The ONNX model builder wrote no model.onnx for {str(model_folder)!r}.")
