"""A strict reader for the header of a safetensors file, run before safetensors or torch see it.

The header is 8 bytes of little-endian length, then that many bytes of JSON: tensor name ->
``{"dtype", "shape", "data_offsets"}`` plus an optional ``__metadata__`` of strings. The checks are
those of the safetensors library (so a file passed here loads there) and a few stricter ones
(duplicate keys, unknown entry fields); any failure is an ``AdapterCorruptError`` naming the file
and the tensor.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from adaptrix_core.adapters.files import loads_object, open_regular
from adaptrix_core.errors import AdapterCorruptError

MAX_HEADER = 100 * 2**20  # the safetensors library's own limit
_MAX_USIZE = 2**64 - 1
# Bytes per element of every dtype that safetensors.torch can load.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _element_count(file: str, name: str, shape: Any) -> int:
    if not isinstance(shape, list):
        raise AdapterCorruptError(f"{file}: tensor {name!r} has shape {_short(shape)}; a shape is a list of integers.")
    count = 1
    for dim in shape:
        if not _is_int(dim) or not 0 <= dim <= _MAX_USIZE:
            raise AdapterCorruptError(
                f"{file}: tensor {name!r} has shape {_short(shape)}; every dimension must be a non-negative integer."
            )
        count *= dim
        if count > _MAX_USIZE:
            raise AdapterCorruptError(f"{file}: tensor {name!r} has shape {_short(shape)}, too large to exist.")
    return count


def _check_entry(file: str, name: str, entry: Any, data_size: int) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise AdapterCorruptError(f"{file}: header entry {name!r} is {_short(entry)}, not a tensor description.")
    if set(entry) != _ENTRY_KEYS:
        missing, extra = sorted(_ENTRY_KEYS - set(entry)), sorted(set(entry) - _ENTRY_KEYS)
        detail = f"lacks {', '.join(missing)}" if missing else f"has unknown field(s) {', '.join(map(repr, extra))}"
        raise AdapterCorruptError(f"{file}: tensor {name!r} {detail}.")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise AdapterCorruptError(
            f"{file}: tensor {name!r} has dtype {_short(dtype)}; known dtypes: {', '.join(DTYPE_SIZES)}."
        )
    count = _element_count(file, name, entry["shape"])
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        raise AdapterCorruptError(
            f"{file}: tensor {name!r} has data_offsets {_short(offsets)}; they must be two non-negative integers [start, end]."
        )
    start, end = offsets
    if start > end or end > data_size:
        raise AdapterCorruptError(
            f"{file} is truncated or corrupt (tensor {name!r} lies outside the file: bytes {start}-{end} of {data_size})."
        )
    if end - start != count * DTYPE_SIZES[dtype]:
        raise AdapterCorruptError(
            f"{file}: tensor {name!r} ({dtype}, shape {_short(entry['shape'])}) needs {count * DTYPE_SIZES[dtype]} "
            f"bytes but its data_offsets span {end - start}."
        )
    return start, end


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor names to ``{"dtype", "shape", "data_offsets"}``, every field and offset checked.

    Checked: the header length (at least ``{}``, at most 100 MiB and the file), the JSON (an object,
    UTF-8, no duplicate keys, not nested too deeply), every entry (a known dtype, a shape of
    non-negative integers, two integer data offsets whose span equals the tensor's byte size), and
    the data region (tensors inside it, in contiguous order, without overlaps or gaps, ending
    exactly at the end of the file). ``__metadata__`` must map strings to strings and is dropped.
    """
    file = path.name
    handle, size = open_regular(path, f"The weights file {file}")
    with handle:
        try:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise AdapterCorruptError(f"{file} is empty or truncated ({size} bytes; a safetensors file starts with 8).")
            (length,) = struct.unpack("<Q", prefix)
            if length < 2 or length > min(MAX_HEADER, size - 8):
                raise AdapterCorruptError(
                    f"{file} is truncated or not a safetensors file (header length {length}, file size {size})."
                )
            raw = handle.read(length)
        except OSError as exc:
            raise AdapterCorruptError(f"{file} cannot be read: {exc.strerror or exc}.") from None
    if len(raw) != length:
        raise AdapterCorruptError(f"{file} changed or was truncated while being read.")
    if not raw.startswith(b"{"):
        raise AdapterCorruptError(f"{file} is not a safetensors file (its header does not start with '{{').")
    header = loads_object(raw, f"The safetensors header of {file}")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise AdapterCorruptError(f"{file}: __metadata__ must map names to strings, got {_short(metadata)}.")
    data_size = size - 8 - length
    spans = sorted((_check_entry(file, name, entry, data_size), name) for name, entry in header.items())
    position, previous = 0, None
    for (start, end), name in spans:
        if start < position:
            raise AdapterCorruptError(f"{file}: tensors {previous!r} and {name!r} overlap (bytes {start}-{position}).")
        if start > position:
            raise AdapterCorruptError(f"{file}: {start - position} unused bytes lie before tensor {name!r}.")
        position, previous = end, name
    if position != data_size:
        raise AdapterCorruptError(f"{file}: {data_size - position} bytes follow the last tensor; the file is corrupt.")
    return header
