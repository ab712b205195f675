"""Exporting an adapter folder out of the store without ever endangering the store.

A destination is refused when it is the adapter's own folder, lies inside the store, or contains the
adapter or the store; paths are compared after resolving symbolic links, and by device and inode
too, so a bind mount or a second spelling of the same folder is caught. Files are copied into a
temporary sibling of the destination, checked, and renamed into place; an existing destination
(only ever a previously exported adapter folder) is moved aside first and removed only after the
new folder is in place, and put back if that rename fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from adaptrix_core.errors import AdapterExistsError, AdapterExportError, AdapterStoreError

# What an exported adapter folder may hold; overwrite never replaces a folder with anything else in it.
EXPORTABLE = ("adapter_config.json", "adapter_model.safetensors", "adaptrix.json", "README.md")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _ancestry(path: Path) -> list[tuple[int, int]]:
    """Device and inode of ``path`` and of every existing folder above it."""
    found = []
    for folder in (path, *path.parents):
        identity = _identity(folder)
        if identity is not None:
            found.append(identity)
    return found


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_destination(store: Path, source: Path, destination: Path, name: str) -> Path:
    """The real (symlink-free) path to export adapter ``name`` to, or ``AdapterExportError``."""
    try:
        real_store, real_source = store.resolve(), source.resolve(strict=True)
        real = destination.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise AdapterExportError(f"Cannot export {name!r} to {str(destination)!r}: the path cannot be resolved ({exc}).") from None
    refusal = f"Cannot export {name!r} to {str(destination)!r}"
    dest_line, dest_id = _ancestry(real), _identity(real)
    source_id, store_id = _identity(real_source), _identity(real_store)
    if real == real_source or (dest_id is not None and dest_id == source_id):
        raise AdapterExportError(f"{refusal}: that is the adapter's own folder in the store; choose a folder outside {str(store)!r}.")
    if _within(real, real_store) or store_id in dest_line:
        raise AdapterExportError(f"{refusal}: it lies inside the adapter store {str(store)!r}; choose a folder outside it.")
    if _within(real_source, real) or (dest_id is not None and dest_id in _ancestry(real_source)):
        raise AdapterExportError(f"{refusal}: it contains the adapter's folder {str(source)!r}; choose another folder.")
    if _within(real_store, real) or (dest_id is not None and dest_id in _ancestry(real_store)):
        raise AdapterExportError(f"{refusal}: it contains the adapter store {str(store)!r}; choose another folder.")
    return real


def _check_replaceable(real: Path, destination: Path, overwrite: bool) -> bool:
    """True when ``real`` exists (and may be replaced); raise when it may not."""
    if not os.path.lexists(real):
        return False
    if not overwrite:
        raise AdapterExistsError(f"{str(destination)!r} already exists; pass overwrite=True to replace it.")
    if real.is_symlink() or not real.is_dir():
        raise AdapterExportError(f"{str(destination)!r} exists and is not a folder; remove it or choose another destination.")
    try:
        with os.scandir(real) as entries:
            for entry in entries:
                if entry.name not in EXPORTABLE or not entry.is_file(follow_symlinks=False):
                    raise AdapterExportError(
                        f"{str(destination)!r} holds {entry.name!r}, which is not part of an exported adapter; "
                        "overwrite only replaces an adapter folder. Choose an empty or new folder."
                    )
    except OSError as exc:
        raise AdapterStoreError(f"Cannot read {str(destination)!r}: {exc.strerror or exc}.") from None
    return True


def export_folder(source: Path, files: Iterable[str], real: Path, destination: Path, overwrite: bool,
                  verify: Callable[[Path], None]) -> None:
    """Copy ``files`` of ``source`` to ``real`` through a checked temporary sibling and an atomic rename.

    ``verify`` is called on the complete copy before it replaces anything. On any failure the
    temporary folder is removed and an existing destination is left exactly as it was.
    """
    exists = _check_replaceable(real, destination, overwrite)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{real.name}.export-", dir=real.parent))
    except OSError as exc:
        raise AdapterStoreError(f"Cannot write to {str(destination)!r}: {exc.strerror or exc}.") from None
    try:
        for file in files:
            shutil.copyfile(source / file, staging / file)
            (staging / file).chmod(0o644)
        staging.chmod(0o755)
        verify(staging)
        if exists:
            _swap(staging, real)
        else:
            os.replace(staging, real)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise AdapterStoreError(f"Exporting to {str(destination)!r} failed, nothing was changed: {exc.strerror or exc}.") from None
        raise


def _swap(staging: Path, real: Path) -> None:
    """Replace folder ``real`` by ``staging``; the old folder is restored if the second rename fails."""
    retired = Path(tempfile.mkdtemp(prefix=f".{real.name}.old-", dir=real.parent))
    old = retired / real.name
    try:
        os.replace(real, old)
        try:
            os.replace(staging, real)
        except BaseException:
            os.replace(old, real)
            raise
    except BaseException:
        if not os.path.lexists(old):
            shutil.rmtree(retired, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)
