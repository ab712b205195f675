"""``POST /upload``: documents sent as multipart files, ingested into the index under the data directory.

A client's filename is never used as a path. Each file is streamed to
``<data_dir>/uploads/.incoming-*`` and renamed to ``<sha256 of its bytes><suffix>``, the suffix
being one of the readers' formats taken from the filename's last extension (or from the part's
content type); the file stays there as the document's source. The request body is counted as it
arrives and refused with 413 once it passes ``server.max_upload_bytes``, before the rest is read.
A file that cannot be ingested is removed again, so a failed upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from adaptrix_core.server.common import ready_state
from adaptrix_core.server.errors import HTTPError

router = APIRouter()
UPLOADS = "uploads"
CONTENT_TYPES = {"text/plain": ".txt", "text/markdown": ".md", "text/x-markdown": ".md", "text/html": ".html",
                 "application/pdf": ".pdf"}
_SUFFIX = re.compile(r"\.([A-Za-z0-9]{1,10})$")
_CHUNK = 1 << 16


class _TooLarge(Exception):
    pass


def uploads_dir(engine: Any) -> Path:
    """The folder uploaded files are kept in: ``uploads`` inside the index's data directory."""
    return Path(engine.config.rag.data_dir).expanduser().resolve() / UPLOADS


def display_name(filename: str | None) -> str:
    """The client's filename as shown back to it: last path component, printable, at most 120 chars."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(c for c in name if c.isprintable())
    return name[:120] or "(unnamed)"


def safe_suffix(filename: str | None, content_type: str | None) -> str | None:
    """A supported reader suffix (``.md``, ``.pdf``, ...) for the file, or None when it has none."""
    from adaptrix_core.rag.readers import SUFFIXES

    match = _SUFFIX.search(display_name(filename))
    if match and f".{match.group(1).lower()}" in SUFFIXES:
        return f".{match.group(1).lower()}"
    if not match:
        return CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())
    return None


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"The upload is larger than the limit of {limit:,} bytes (server.max_upload_bytes); "
                     "send fewer or smaller files per request.", code="request_too_large")


def _save(source: BinaryIO, folder: Path, suffix: str) -> tuple[Path, bool]:
    """Copy ``source`` into ``folder`` as <sha256><suffix>; return (path, whether it was already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, temporary = tempfile.mkstemp(prefix=".incoming-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            source.seek(0)
            while block := source.read(_CHUNK):
                digest.update(block)
                out.write(block)
        final = folder / f"{digest.hexdigest()[:32]}{suffix}"
        existed = final.exists()
        if existed:
            os.unlink(temporary)
        else:
            os.chmod(temporary, 0o644)
            os.replace(temporary, final)
        return final, existed
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def forget_upload(engine: Any, source: str) -> None:
    """Delete the kept file of an uploaded document (sources outside the uploads folder are left alone)."""
    folder = uploads_dir(engine)
    path = Path(source)
    if path.parent == folder and path.is_file():
        path.unlink(missing_ok=True)


async def _read_form(request: Request, limit: int, max_files: int):
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, f"Content-Length {declared!r} is not a number.", code="invalid_request")
        if int(declared) > limit:
            raise _too_large(limit)
    received = 0
    upstream = request.receive

    async def counting_receive() -> dict:
        nonlocal received
        message = await upstream()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge()
        return message

    try:
        return await Request(request.scope, counting_receive).form(max_files=max_files, max_fields=max_files,
                                                                   max_part_size=limit)
    except _TooLarge:
        raise _too_large(limit) from None


@router.post("/upload")
async def upload(request: Request) -> dict[str, Any]:
    """Ingest multipart files (any field name) into the document index; per-file results and errors."""
    state = ready_state(request)
    engine, settings = state.engine, state.settings
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPError(415, "POST /upload takes multipart/form-data with one or more files "
                        "(curl -F file=@notes.md ...).", code="unsupported_media_type")
    form = await _read_form(request, settings.max_upload_bytes, settings.max_upload_files)
    try:
        files = [(value.filename, value.content_type, value.file) for _, value in form.multi_items()
                 if isinstance(value, UploadFile)]
        return await run_in_threadpool(ingest_files, engine, files)
    finally:
        await form.close()


def ingest_files(engine: Any, files: list[tuple[str | None, str | None, BinaryIO]]) -> dict[str, Any]:
    """Keep and ingest ``(filename, content type, binary file)`` items; the answer of ``POST /upload``.

    The web UI's upload goes through here too. Raises ``HTTPError`` (400 / 415) when no file could be
    ingested; files kept for a failed ingestion are removed again.
    """
    from adaptrix_core.rag.readers import SUFFIXES

    if not files:
        raise HTTPError(400, "The request holds no files; send them as multipart file fields.", code="no_files")
    results, saved = [], []
    folder = uploads_dir(engine)
    for filename, content_type, source in files:
        entry = {"filename": display_name(filename)}
        results.append(entry)
        suffix = safe_suffix(filename, content_type)
        if suffix is None:
            entry.update(status="failed", error={
                "type": "unsupported_media_type", "message":
                f"{entry['filename']!r} is not a supported document type; send {', '.join(sorted(SUFFIXES))} files."})
            continue
        path, existed = _save(source, folder, suffix)
        saved.append((entry, path, existed))
    if not saved:
        raise HTTPError(415, " ".join(r["error"]["message"] for r in results), code="unsupported_media_type")
    try:
        report = engine.add_documents([path for _, path, _ in saved])
    except BaseException:  # nothing was committed: take the new files away again
        for _, path, existed in saved:
            if not existed:
                path.unlink(missing_ok=True)
        raise
    _fill_results(report, saved)
    done = [r for r in results if r["status"] != "failed"]
    if not done:
        raise HTTPError(400, "No file could be ingested: " + " ".join(
            f"{r['filename']}: {r['error']['message']}" for r in results), code="document_error")
    return {"files": results, "chunks_added": report.chunks_added, "generation": report.generation,
            "seconds": round(report.seconds, 3)}


def _fill_results(report: Any, saved: list[tuple[dict, Path, bool]]) -> None:
    from adaptrix_core.rag.readers import path_doc_id

    failures = dict(report.failed)
    for entry, path, existed in saved:
        doc_id = path_doc_id(path)
        status = next((name for name in ("added", "replaced", "unchanged") if doc_id in getattr(report, name)), None)
        if status is not None:
            entry.update(status=status, document=doc_id)
            continue
        reason = failures.get(str(path), "it could not be read.").replace(repr(str(path)), repr(entry["filename"]))
        reason = reason.replace(str(path), entry["filename"])
        entry.update(status="failed", error={"type": "document_error", "message": reason})
        if not existed:
            path.unlink(missing_ok=True)
