"""The adapter store: one standard PEFT folder per adapter plus ``adaptrix.json``.

Reading never changes anything on disk; writing goes through a staging folder that is renamed into
place, so a crash leaves either the old adapter or the new one, never half of one. Weights are only
ever read as safetensors, and every file is checked (config schema, safetensors header) before
peft, safetensors or torch see it. Store entries are real folders: a symbolic link is reported,
never followed.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptrix_core.adapters.export import EXPORTABLE, check_destination, export_folder
from adaptrix_core.adapters.files import read_json_object
from adaptrix_core.adapters.metadata import (
    METADATA_FILE,
    PEFT_CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterMetadata,
    check_adapter_name,
    sha256_of,
)
from adaptrix_core.adapters.safetensors_header import FLOAT_DTYPES, read_safetensors_header
from adaptrix_core.adapters.schema import LoraConfigSchema, expected_rank, validate_adapter_config
from adaptrix_core.errors import (
    AdapterCorruptError,
    AdapterError,
    AdapterExistsError,
    AdapterIntegrityError,
    AdapterMetadataError,
    AdapterNotFoundError,
    AdapterStoreError,
)
from adaptrix_core.jsonio import write_json_atomic

__all__ = ["AdapterListing", "AdapterManager", "check_peft_folder", "lora_module_shapes", "read_safetensors_header"]


@dataclass(frozen=True)
class AdapterListing:
    """One entry of the store: its name, and its metadata or the reason it cannot be used."""

    name: str
    metadata: AdapterMetadata | None
    problem: str | None


def lora_module_shapes(header: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Module path to ``(in_features, out_features, rank)`` from PEFT LoRA tensor names.

    ``header`` is a checked one (``read_safetensors_header``): LoRA tensors must also be floating
    point matrices, with lora_A and lora_B present and of one rank for each module.
    """
    pairs: dict[str, dict[str, list[int]]] = {}
    for key, entry in header.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                if entry["dtype"] not in FLOAT_DTYPES:
                    raise AdapterCorruptError(
                        f"LoRA weight {key!r} has dtype {entry['dtype']}; LoRA weights are {', '.join(FLOAT_DTYPES)}."
                    )
                if len(entry["shape"]) < 2:
                    raise AdapterCorruptError(f"LoRA weight {key!r} has shape {entry['shape']}; LoRA weights are matrices.")
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


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder (following symlinks); unreadable paths are a typed error."""
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, RuntimeError) as exc:
        raise AdapterCorruptError(f"{str(path)!r} cannot be read: {getattr(exc, 'strerror', None) or exc}.") from None


def read_peft_config(folder: Path) -> tuple[dict[str, Any], LoraConfigSchema]:
    """The folder's ``adapter_config.json``, checked to be a LoRA config against the schema."""
    config = read_json_object(folder / PEFT_CONFIG_FILE, "The PEFT config")
    peft_type = config.get("peft_type")
    if isinstance(peft_type, str) and peft_type.upper() != "LORA":
        raise AdapterCorruptError(f"{str(folder)!r} holds a {peft_type} adapter; only LoRA is supported.")
    return config, validate_adapter_config(config)


def check_peft_folder(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[int, int, int]]]:
    """Check a PEFT LoRA folder (config schema, safetensors header, shapes vs rank); return config and shapes."""
    if not _is_dir(folder):
        raise AdapterNotFoundError(f"No adapter folder at {str(folder)!r}.")
    config, schema = read_peft_config(folder)
    weights = folder / WEIGHTS_FILE
    if not os.path.lexists(weights):
        legacy = folder / "adapter_model.bin"
        hint = " Only safetensors weights are loaded (pickle files are never read); re-save it with safe_serialization=True." if os.path.lexists(legacy) else ""
        raise AdapterCorruptError(f"{str(folder)!r} has no {WEIGHTS_FILE}.{hint}")
    shapes = lora_module_shapes(read_safetensors_header(weights))
    if not shapes:
        raise AdapterCorruptError(f"{WEIGHTS_FILE} in {str(folder)!r} holds no LoRA weights.")
    for module, (_, _, rank) in sorted(shapes.items()):
        expected = expected_rank(schema, module)
        if rank != expected:
            says = f"the config says r={expected}" if expected == schema.r else f"its rank_pattern says {expected}"
            raise AdapterCorruptError(f"Weights of {module!r} have rank {rank}, {says}.")
    return config, shapes


def _changes_store(method: Callable[..., Any]) -> Callable[..., Any]:
    """Bump ``revision`` once ``method`` has returned or failed (a failure may have changed the store too)."""

    @functools.wraps(method)
    def wrapper(self: AdapterManager, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.revision += 1

    return wrapper


class AdapterManager:
    """List, read, validate, save, import, export and delete adapters in one store folder.

    ``revision`` counts the changes made through this object, so caches of the store's contents
    (the routers' cards) see them at once without re-reading the folder.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self.revision = 0

    def path(self, name: str) -> Path:
        """The folder of adapter ``name`` (which may not exist); ``InvalidAdapterNameError`` for a bad name."""
        return self.directory / check_adapter_name(name)

    def names(self) -> list[str]:
        """Names of every entry in the store, readable or not (hidden ones, starting with '.', excepted).

        Stray files, symbolic links and folders with invalid names are included, so that listings
        and ``validate`` report them; an unreadable store is an ``AdapterStoreError``.
        """
        try:
            with os.scandir(self.directory) as entries:
                return sorted(entry.name for entry in entries if not entry.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise AdapterStoreError(f"The adapter store {str(self.directory)!r} cannot be read: {exc.strerror or exc}.") from None

    def list(self) -> list[AdapterListing]:
        """Every entry of the store with its metadata, or the problem ``validate`` found; never raises
        for one broken entry (only for an unreadable store)."""
        listings = []
        for name in self.names():
            try:
                listings.append(AdapterListing(name, self.validate(name)[0], None))
            except AdapterError as exc:
                listings.append(AdapterListing(name, None, str(exc)))
            except Exception as exc:  # a last line of defence: one entry must never hide the others
                listings.append(AdapterListing(name, None, f"unexpected {type(exc).__name__}: {exc}"))
        return listings

    def _not_found(self, name: str) -> AdapterNotFoundError:
        try:
            known = ", ".join(self.names()) or "none"
        except AdapterStoreError:
            known = "unknown: the store cannot be read"
        return AdapterNotFoundError(f"No adapter named {name!r} in {str(self.directory)!r} (available: {known}).")

    def _folder(self, name: str) -> Path:
        """The real folder of stored adapter ``name``; links, files and missing entries are typed errors."""
        folder = self.path(name)
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            raise self._not_found(name) from None
        except OSError as exc:
            raise AdapterCorruptError(f"Adapter {name!r} cannot be read: {exc.strerror or exc}.") from None
        if stat.S_ISLNK(mode):
            raise AdapterCorruptError(f"Store entry {name!r} is a symbolic link; adapters must be real folders.")
        if not stat.S_ISDIR(mode):
            raise AdapterCorruptError(f"Store entry {name!r} is not a folder; an adapter is a folder of PEFT files.")
        return folder

    def metadata(self, name: str) -> AdapterMetadata:
        """The adapter's ``adaptrix.json``, or metadata derived from its PEFT config when there is none."""
        folder = self._folder(name)
        meta_file = folder / METADATA_FILE
        if not os.path.lexists(meta_file):
            config, _ = read_peft_config(folder)
            return AdapterMetadata.from_peft_config(name, config)
        data = read_json_object(meta_file, "The Adaptrix metadata")
        try:
            meta = AdapterMetadata.model_validate(data)
        except AdapterError as exc:  # a bad name or field in the file
            detail = str(exc).removeprefix("Invalid adapter metadata: ")
            raise AdapterCorruptError(f"Metadata of adapter {name!r} ({METADATA_FILE}) is invalid: {detail}") from None
        if meta.name != name:
            raise AdapterCorruptError(f"Folder {name!r} holds metadata for an adapter named {meta.name!r}.")
        return meta

    def validate(self, name: str) -> tuple[AdapterMetadata, dict[str, Any], dict[str, tuple[int, int, int]]]:
        """Check every file of adapter ``name``; return (metadata, PEFT config, module shapes).

        Raises ``InvalidAdapterNameError``, ``AdapterNotFoundError``, ``AdapterCorruptError`` (its
        ``AdapterConfigError`` subclass for a bad ``adapter_config.json``) or ``AdapterIntegrityError``
        (the weights' sha256 differs from the recorded one). Nothing is modified.
        """
        folder = self._folder(name)
        config, shapes = check_peft_folder(folder)
        meta = self.metadata(name)
        if meta.weights_sha256 is not None:
            actual = _sha256(folder / WEIGHTS_FILE)
            if actual != meta.weights_sha256:
                raise AdapterIntegrityError(
                    f"Adapter {name!r}: {WEIGHTS_FILE} has sha256 {actual[:12]}..., the metadata records "
                    f"{meta.weights_sha256[:12]}...; the weights were changed or damaged after saving."
                )
        return meta, config, shapes

    @_changes_store
    def save(self, source: str | os.PathLike, metadata: AdapterMetadata, overwrite: bool = False) -> AdapterMetadata:
        """Copy a PEFT folder into the store as ``metadata.name``, recording the weights' sha256.

        The copy is checked again before it is renamed into place; on any failure the store is as
        it was (an adapter being replaced stays until the new one is complete).
        """
        if not isinstance(metadata, AdapterMetadata):
            raise AdapterMetadataError(f"metadata must be an AdapterMetadata, got {type(metadata).__name__}.")
        source = Path(source)
        check_peft_folder(source)
        target = self.path(metadata.name)
        if os.path.lexists(target) and not overwrite:
            raise AdapterExistsError(f"Adapter {metadata.name!r} already exists; pass overwrite=True to replace it.")
        if os.path.islink(target):
            raise AdapterCorruptError(f"Store entry {metadata.name!r} is a symbolic link; adapters must be real folders.")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{metadata.name}.staging-", dir=self.directory))
        except OSError as exc:
            raise AdapterStoreError(f"Cannot write to the adapter store {str(self.directory)!r}: {exc.strerror or exc}.") from None
        try:
            for file in (PEFT_CONFIG_FILE, WEIGHTS_FILE, "README.md"):
                if file != "README.md" or (source / file).is_file():
                    shutil.copyfile(source / file, staging / file)
            check_peft_folder(staging)  # the source may have changed since it was checked
            final = metadata.model_copy(update={"weights_sha256": sha256_of(staging / WEIGHTS_FILE)})
            (staging / METADATA_FILE).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
            for file in staging.iterdir():  # temporary files start private; a store is shared like any folder
                file.chmod(0o644)
            staging.chmod(0o755)
            self._swap_in(staging, target)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise AdapterStoreError(f"Saving adapter {metadata.name!r} failed, the store is unchanged: {exc.strerror or exc}.") from None
            raise
        return final

    def _swap_in(self, staging: Path, target: Path) -> None:
        if not os.path.lexists(target):
            os.replace(staging, target)
            return
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=self.directory))
        os.replace(target, retired / target.name)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(retired / target.name, target)
            shutil.rmtree(retired, ignore_errors=True)
            raise
        shutil.rmtree(retired, ignore_errors=True)

    @_changes_store
    def update_metadata(self, name: str, **changes: Any) -> AdapterMetadata:
        """Change metadata fields (description, routing, metrics, ...); the weights stay as they are.

        ``weights_sha256`` cannot be changed this way (the adapter would fail its integrity check).
        """
        if "weights_sha256" in changes:
            raise AdapterMetadataError(f"update_metadata cannot change the weights_sha256 of adapter {name!r}; save records it.")
        meta = AdapterMetadata.model_validate({**self.metadata(name).model_dump(), **changes})
        folder = self._folder(name)
        try:
            write_json_atomic(folder / METADATA_FILE, meta.model_dump(mode="json"))
        except OSError as exc:
            raise AdapterStoreError(f"Cannot write metadata of adapter {name!r}: {exc.strerror or exc}.") from None
        return meta

    @_changes_store
    def delete(self, name: str) -> None:
        """Remove store entry ``name``: an adapter folder, or a stray file or symbolic link.

        A link is removed itself; what it points to is never touched. A folder is first renamed to
        a hidden name (so it leaves the store at once), then removed.
        """
        entry = self.path(name)
        try:
            mode = os.lstat(entry).st_mode
        except FileNotFoundError:
            raise self._not_found(name) from None
        except OSError as exc:
            raise AdapterStoreError(f"Cannot delete adapter {name!r}: {exc.strerror or exc}.") from None
        try:
            if not stat.S_ISDIR(mode):  # a link (to anything) or a stray file
                os.unlink(entry)
                return
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.deleted-", dir=self.directory))
            os.replace(entry, trash / name)
        except OSError as exc:
            raise AdapterStoreError(f"Cannot delete adapter {name!r}: {exc.strerror or exc}.") from None
        shutil.rmtree(trash, ignore_errors=True)
        if trash.exists():
            raise AdapterStoreError(f"Adapter {name!r} left the store but {str(trash)!r} could not be removed entirely.")

    def import_peft(self, path: str | os.PathLike, name: str, overwrite: bool = False, **metadata: Any) -> AdapterMetadata:
        """Add a PEFT LoRA folder made elsewhere; metadata is derived from its config (and ``metadata``)."""
        check_adapter_name(name)
        config, _ = check_peft_folder(Path(path))
        meta = AdapterMetadata.from_peft_config(name, config, **metadata)
        return self.save(path, meta, overwrite=overwrite)

    def export(self, name: str, destination: str | os.PathLike, overwrite: bool = False) -> Path:
        """Copy a validated adapter to ``destination``: a PEFT folder (plus adaptrix.json) any tool can load.

        Refused with ``AdapterExportError``: the adapter's own folder, anything inside the store, and
        any folder containing the adapter or the store (symbolic links resolved). ``overwrite``
        replaces only a previously exported adapter folder, atomically: on failure the old one stays.
        """
        meta, _, _ = self.validate(name)
        source = self._folder(name)
        real = check_destination(self.directory, source, Path(destination), name)
        expected = meta.weights_sha256 or _sha256(source / WEIGHTS_FILE)
        files = [file for file in EXPORTABLE if (source / file).is_file()]

        def verify(copy: Path) -> None:
            check_peft_folder(copy)
            if _sha256(copy / WEIGHTS_FILE) != expected:
                raise AdapterIntegrityError(f"Adapter {name!r} changed while it was being exported; nothing was written.")

        export_folder(source, files, real, Path(destination), overwrite, verify)
        return Path(destination).expanduser()


def _sha256(path: Path) -> str:
    try:
        return sha256_of(path)
    except OSError as exc:
        raise AdapterCorruptError(f"{path.name} cannot be read: {exc.strerror or exc}.") from None
