"""The adapter store: one standard PEFT folder per adapter plus ``adaptrix.json``.

Reading never changes anything on disk; writing goes through a staging folder that is renamed into
place, so a crash leaves either the old adapter or the new one, never half of one. Weights are only
ever read as safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adaptrix_core.adapter_meta import (
    METADATA_FILE,
    PEFT_CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterMetadata,
    check_adapter_name,
    sha256_of,
)
from adaptrix_core.errors import (
    AdapterCorruptError,
    AdapterError,
    AdapterExistsError,
    AdapterIntegrityError,
    AdapterNotFoundError,
)

_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class AdapterListing:
    """One folder of the store: its name, and its metadata or the reason it cannot be read."""

    name: str
    metadata: AdapterMetadata | None
    problem: str | None


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor names to ``{"dtype", "shape", "data_offsets"}``, checked against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise AdapterCorruptError(f"{path.name} is empty or truncated.")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > min(_MAX_HEADER, size - 8):
                raise AdapterCorruptError(f"{path.name} is not a safetensors file (bad header length).")
            header = json.loads(handle.read(header_length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterCorruptError(f"{path.name} cannot be read as safetensors: {exc}") from None
    if not isinstance(header, dict):
        raise AdapterCorruptError(f"{path.name} has a malformed safetensors header.")
    header.pop("__metadata__", None)
    data_size = size - 8 - header_length
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not offsets or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1] <= data_size:
            raise AdapterCorruptError(f"{path.name} is truncated or corrupt (tensor {name!r} lies outside the file).")
    return header


def lora_module_shapes(header: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Module path to ``(in_features, out_features, rank)`` from PEFT LoRA tensor names."""
    pairs: dict[str, dict[str, list[int]]] = {}
    for key, entry in header.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0].removeprefix("base_model.model.")
                pairs.setdefault(module, {})[part] = entry["shape"]
    shapes = {}
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterCorruptError(f"Module {module!r} has only {', '.join(pair)} weights, not both lora_A and lora_B.")
        (rank_a, fan_in), (fan_out, rank_b) = pair["lora_A"][:2], pair["lora_B"][:2]
        if rank_a != rank_b:
            raise AdapterCorruptError(f"Module {module!r}: lora_A rank {rank_a} differs from lora_B rank {rank_b}.")
        shapes[module] = (fan_in, fan_out, rank_a)
    return shapes


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterCorruptError(f"{what} is missing ({path.name}).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterCorruptError(f"{what} ({path.name}) is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterCorruptError(f"{what} ({path.name}) must be a JSON object.")
    return data


def check_peft_folder(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[int, int, int]]]:
    """Check a PEFT LoRA folder (config, safetensors weights, shapes vs rank); return config and shapes."""
    if not folder.is_dir():
        raise AdapterNotFoundError(f"No adapter folder at {str(folder)!r}.")
    config = _read_json(folder / PEFT_CONFIG_FILE, "The PEFT config")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterCorruptError(f"{str(folder)!r} holds a {peft_type or 'untyped'} adapter; only LoRA is supported.")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        legacy = folder / "adapter_model.bin"
        hint = " Only safetensors weights are loaded (pickle files are never read); re-save it with safe_serialization=True." if legacy.exists() else ""
        raise AdapterCorruptError(f"{str(folder)!r} has no {WEIGHTS_FILE}.{hint}")
    shapes = lora_module_shapes(read_safetensors_header(weights))
    if not shapes:
        raise AdapterCorruptError(f"{WEIGHTS_FILE} in {str(folder)!r} holds no LoRA weights.")
    rank = config.get("r")
    if not config.get("rank_pattern"):
        wrong = sorted(m for m, (_, _, r) in shapes.items() if r != rank)
        if wrong:
            raise AdapterCorruptError(f"Weights of {wrong[0]!r} have rank {shapes[wrong[0]][2]}, the config says r={rank}.")
    return config, shapes


class AdapterManager:
    """List, read, validate, save, import, export and delete adapters in one store folder."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()

    def path(self, name: str) -> Path:
        """The folder of adapter ``name`` (which may not exist)."""
        return self.directory / check_adapter_name(name)

    def names(self) -> list[str]:
        """Names of every adapter folder in the store, readable or not."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name for p in self.directory.iterdir()
            if p.is_dir() and not p.name.startswith(".") and ((p / PEFT_CONFIG_FILE).exists() or (p / METADATA_FILE).exists())
        )

    def list(self) -> list[AdapterListing]:
        """Every adapter in the store with its metadata, or the problem found by ``validate``."""
        listings = []
        for name in self.names():
            try:
                listings.append(AdapterListing(name, self.validate(name)[0], None))
            except AdapterError as exc:
                listings.append(AdapterListing(name, None, str(exc)))
        return listings

    def _folder(self, name: str) -> Path:
        folder = self.path(name)
        if not folder.is_dir():
            known = ", ".join(self.names()) or "none"
            raise AdapterNotFoundError(f"No adapter named {name!r} in {str(self.directory)!r} (available: {known}).")
        return folder

    def metadata(self, name: str) -> AdapterMetadata:
        """The adapter's ``adaptrix.json``, or metadata derived from its PEFT config when there is none."""
        folder = self._folder(name)
        meta_file = folder / METADATA_FILE
        if not meta_file.exists():
            return AdapterMetadata.from_peft_config(name, _read_json(folder / PEFT_CONFIG_FILE, "The PEFT config"))
        data = _read_json(meta_file, "The Adaptrix metadata")
        try:
            meta = AdapterMetadata.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise AdapterCorruptError(
                f"Metadata of adapter {name!r} is invalid: {'.'.join(map(str, first['loc']))}: {first['msg']}."
            ) from None
        if meta.name != name:
            raise AdapterCorruptError(f"Folder {name!r} holds metadata for an adapter named {meta.name!r}.")
        return meta

    def validate(self, name: str) -> tuple[AdapterMetadata, dict[str, Any], dict[str, tuple[int, int, int]]]:
        """Check every file of adapter ``name``; return (metadata, PEFT config, module shapes).

        Raises ``AdapterNotFoundError``, ``AdapterCorruptError`` or ``AdapterIntegrityError`` (the
        weights' sha256 differs from the recorded one). Nothing is modified.
        """
        folder = self._folder(name)
        config, shapes = check_peft_folder(folder)
        meta = self.metadata(name)
        if meta.weights_sha256 is not None:
            actual = sha256_of(folder / WEIGHTS_FILE)
            if actual != meta.weights_sha256:
                raise AdapterIntegrityError(
                    f"Adapter {name!r}: {WEIGHTS_FILE} has sha256 {actual[:12]}..., the metadata records "
                    f"{meta.weights_sha256[:12]}...; the weights were changed or damaged after saving."
                )
        return meta, config, shapes

    def save(self, source: str | os.PathLike, metadata: AdapterMetadata, overwrite: bool = False) -> AdapterMetadata:
        """Copy a PEFT folder into the store as ``metadata.name``, recording the weights' sha256."""
        source = Path(source)
        config, _ = check_peft_folder(source)
        target = self.path(metadata.name)
        if target.exists() and not overwrite:
            raise AdapterExistsError(f"Adapter {metadata.name!r} already exists; pass overwrite=True to replace it.")
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{metadata.name}.staging-", dir=self.directory))
        try:
            for file in (PEFT_CONFIG_FILE, WEIGHTS_FILE):
                shutil.copy2(source / file, staging / file)
            for extra in ("README.md",):
                if (source / extra).is_file():
                    shutil.copy2(source / extra, staging / extra)
            final = metadata.model_copy(update={"weights_sha256": sha256_of(staging / WEIGHTS_FILE)})
            (staging / METADATA_FILE).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
            for file in staging.iterdir():  # temporary files start private; a store is shared like any folder
                file.chmod(0o644)
            staging.chmod(0o755)
            self._swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def _swap_in(self, staging: Path, target: Path) -> None:
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=self.directory))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)

    def update_metadata(self, name: str, **changes: Any) -> AdapterMetadata:
        """Change metadata fields (description, routing, metrics, ...); the weights stay as they are."""
        meta = AdapterMetadata.model_validate({**self.metadata(name).model_dump(), **changes})
        folder = self._folder(name)
        handle, temporary = tempfile.mkstemp(prefix=".adaptrix-", suffix=".json", dir=folder)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(meta.model_dump_json(indent=2) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, folder / METADATA_FILE)
        return meta

    def delete(self, name: str) -> None:
        """Remove adapter ``name`` from the store."""
        shutil.rmtree(self._folder(name))

    def import_peft(self, path: str | os.PathLike, name: str, overwrite: bool = False, **metadata: Any) -> AdapterMetadata:
        """Add a PEFT LoRA folder made elsewhere; metadata is derived from its config (and ``metadata``)."""
        config, _ = check_peft_folder(Path(path))
        meta = AdapterMetadata.from_peft_config(name, config, **metadata)
        return self.save(path, meta, overwrite=overwrite)

    def export(self, name: str, destination: str | os.PathLike, overwrite: bool = False) -> Path:
        """Copy a validated adapter to ``destination``: a PEFT folder (plus adaptrix.json) any tool can load."""
        self.validate(name)
        destination = Path(destination)
        if destination.exists():
            if not overwrite:
                raise AdapterExistsError(f"{str(destination)!r} already exists; pass overwrite=True to replace it.")
            shutil.rmtree(destination)
        shutil.copytree(self._folder(name), destination)
        return destination
