"""Helpers for the adapter store hardening tests: real adapters made on a tiny model, tree digests,
hand-written safetensors files and a store with broken entries of every kind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

GOOD = ("good", "other")
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
META = "adaptrix.json"


def tree_digest(root: Path) -> str:
    """sha256 over every path under ``root``: names, file bytes, link targets and modes; links not followed."""
    digest = hashlib.sha256()
    if os.path.islink(root) or not root.is_dir():
        digest.update(repr(os.readlink(root) if os.path.islink(root) else root.read_bytes()).encode())
        return digest.hexdigest()
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder, name)
            info = os.lstat(path)
            digest.update(f"{path.relative_to(root)}|{info.st_mode:o}|".encode("utf-8", "surrogateescape"))
            if os.path.islink(path):
                digest.update(os.readlink(path).encode("utf-8", "surrogateescape"))
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def make_seed_store(engine, store: Path) -> None:
    """Two real, untrained (but non-zero) adapters saved by the engine into its store: 'good' and 'other'."""
    import torch

    for name, rank in zip(GOOD, (4, 2), strict=True):
        engine.create_adapter(name, layers="all", rank=rank)
        with torch.no_grad():  # lora_B starts at zero; make the adapter change answers like a trained one
            for parameter in engine.backend.lora.parameters(name):
                parameter.normal_(0, 0.5)
        engine.save_adapter(name, description=f"the {name} adapter")
    assert sorted(os.listdir(store)) == sorted(GOOD)


def copy_good(seed: Path, store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    for name in GOOD:
        shutil.copytree(seed / name, store / name, symlinks=True)


def safetensors_bytes(header: Any, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def read_header(weights: Path) -> tuple[dict[str, Any], bytes]:
    blob = weights.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def clone_adapter(store: Path, source: str, name: str) -> Path:
    """A copy of adapter ``source`` named ``name`` whose metadata records no checksum (so edits are not
    caught as tampering but by the check under test)."""
    folder = store / name
    shutil.copytree(store / source, folder)
    meta = json.loads((folder / META).read_text())
    meta.update(name=name, weights_sha256=None)
    (folder / META).write_text(json.dumps(meta))
    return folder


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
