"""Document index commands: ``adaptrix index add | list | remove | stats | search``.

They need the embedding model only (``add``, ``search``), never the language model. ``--data-dir``
overrides ``rag.data_dir``; ``add`` shows a progress bar of the chunks embedded (on stderr, hidden
with ``--json`` or ``adaptrix --quiet``) and exits with status 1 when any file failed, after
committing the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from adaptrix_core.cli import params as cli_params
from adaptrix_core.cli.common import json_option
from adaptrix_core.cli.output import console as _console
from adaptrix_core.cli.output import emit_json as _emit_json
from adaptrix_core.cli.output import fail, handle_errors, progress_disabled, settings
from adaptrix_core.cli.output import quiet_libraries as _quiet_libraries


def index_options(command: Callable) -> Callable:
    """``--config`` and ``--data-dir``; the command receives ``index_factory()``, which builds the
    ``DocumentIndex`` service alone (no language model is loaded)."""

    @functools.wraps(command)
    def wrapper(*args: Any, config_path, data_dir, **kwargs: Any) -> Any:
        cli_params.check_folder_option(data_dir, "--data-dir")

        def index_factory(**rag: Any):
            from adaptrix_core.config import load_config
            from adaptrix_core.embeddings import embedder_for
            from adaptrix_core.rag.service import DocumentIndex

            _quiet_libraries()
            config = load_config(path=config_path, overrides={"rag": {"data_dir": data_dir, **rag}})
            model = config.router.embedding_model
            return DocumentIndex(config.rag, lambda: embedder_for(config), model)

        return command(*args, index_factory=index_factory, **kwargs)

    wrapper = click.option("--data-dir", help="Index folder (default: rag.data_dir, ./rag_index).")(wrapper)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")(wrapper)


@click.group()
def index() -> None:
    """The document index used by RAG: add files and folders, list, remove, inspect, search."""


@index.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option("--chunk-size", type=click.IntRange(min=16), help="Tokens per chunk (default: rag.chunk_size, 256).")
@click.option("--chunk-overlap", type=cli_params.NON_NEGATIVE,
              help="Tokens shared by consecutive chunks (default: rag.chunk_overlap, 32).")
@click.option("--index-type", type=click.Choice(["flat", "ivf", "hnsw"]), help="FAISS layout (default: rag.index_type).")
@index_options
@json_option
@handle_errors
def index_add(paths: tuple[str, ...], chunk_size, chunk_overlap, index_type, index_factory, as_json: bool) -> None:
    """Add files (.txt, .md, .pdf, .html) and folders (walked recursively) to the index."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    index = index_factory(chunk_size=chunk_size, chunk_overlap=chunk_overlap, index_type=index_type)
    with Progress(TextColumn("embedding chunks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=_console(stderr=True), disable=progress_disabled(as_json)) as bar:
        task = bar.add_task("embed", total=None)
        report = index.add_documents([Path(p).absolute() if p.strip() else p for p in paths],
                                      progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        _emit_json(report.to_dict())
    else:
        from rich.table import Table

        table = Table(title=f"Index {index.index_stats()['data_dir']}")
        for column in ("status", "id", "source / reason"):
            table.add_column(column, overflow="fold")
        for status in ("added", "replaced", "unchanged"):
            for doc_id in getattr(report, status):
                table.add_row(status, doc_id, report.sources[doc_id])
        for _source, reason in report.failed:
            table.add_row("[red]failed[/]", "", reason)
        for source in report.skipped:
            table.add_row("[yellow]skipped[/]", "", f"{source} (unsupported format)")
        console = _console()
        console.print(table)
        if not settings().quiet:
            console.print(f"{report.chunks_added} chunks embedded in {report.seconds:.1f} s"
                          + (f" · generation {report.generation}" if report.generation is not None else " · nothing changed"))
    if report.failed:
        fail(f"{len(report.failed)} file(s) could not be added (the others were): "
             + "; ".join(f"{source}: {reason}" for source, reason in report.failed))


@index.command("list")
@index_options
@json_option
@handle_errors
def index_list(index_factory, as_json: bool) -> None:
    """List the indexed documents."""
    documents = index_factory().list_documents()
    if as_json:
        _emit_json({"documents": documents})
        return
    from rich.table import Table

    table = Table(title=f"{len(documents)} documents")
    for column in ("id", "source", "kind", "pages", "chunks", "added"):
        table.add_column(column, overflow="fold")
    for d in documents:
        table.add_row(d["id"], d["source"], d["kind"], str(d["pages"]), str(d["chunks"]), d["added_at"][:19])
    _console().print(table)


@index.command("remove")
@click.argument("doc_id")
@index_options
@json_option
@handle_errors
def index_remove(doc_id: str, index_factory, as_json: bool) -> None:
    """Remove the document DOC_ID (an id from 'index list', or the path it was added from)."""
    cli_params.check_texts([doc_id], "DOC_ID", prompt=True)
    removed = index_factory().remove_document(doc_id)
    if as_json:
        _emit_json({"removed": removed})
    else:
        _console().print(f"removed [bold]{removed['id']}[/] ({removed['source']}, {removed['chunks']} chunks)")


@index.command("stats")
@index_options
@json_option
@handle_errors
def index_stats(index_factory, as_json: bool) -> None:
    """Documents, chunks, generation, FAISS layout and file sizes (the files are verified)."""
    stats = index_factory().index_stats()
    if as_json:
        _emit_json(stats)
        return
    from rich.table import Table

    table = Table(title="Document index", show_header=False)
    for key, value in stats.items():
        shown = f"{value / 2**20:,.2f} MiB" if key.endswith("_bytes") else str(value)
        table.add_row(key, shown)
    _console().print(table)


@index.command("search")
@click.argument("query")
@click.option("--top-k", type=cli_params.POSITIVE, help="Passages to return (default: rag.top_k, 4).")
@click.option("--min-score", type=cli_params.MIN_SCORE, help="Minimum cosine similarity (default: rag.min_score).")
@index_options
@json_option
@handle_errors
def index_search(query: str, top_k, min_score, index_factory, as_json: bool) -> None:
    """Show the passages retrieval finds for QUERY, best first."""
    from adaptrix_core.errors import InvalidPromptError

    if not query.strip():
        raise InvalidPromptError("QUERY is empty: give the text to search for.")
    cli_params.check_texts([query], "QUERY", prompt=True)
    hits = index_factory().retrieve(query, top_k, min_score)
    if as_json:
        _emit_json({"query": query, "sources": hits})
        return
    from rich.table import Table

    table = Table(title=f"{len(hits)} passages")
    for column in ("score", "source", "page", "chars", "text"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        text = " ".join(hit["text"].split())
        table.add_row(f"{hit['score']:.3f}", hit["source"], str(hit["page"] or ""), f"{hit['start']}-{hit['end']}",
                      text[:160] + ("..." if len(text) > 160 else ""))
    _console().print(table)
