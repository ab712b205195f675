"""``adaptrix export onnx``: build a backend's model files ahead of time, with a progress bar.

The ONNX backend builds its graph into the cache on first use; exporting does it beforehand (for a
deployment image, or after adding adapters that need other LoRA slots). A backend supports this
with an ``export(family, progress)`` method that returns what it built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from adaptrix_core.cli.common import EngineOptions, json_option
from adaptrix_core.cli.output import console as _console
from adaptrix_core.cli.output import emit_json as _emit_json
from adaptrix_core.cli.output import handle_errors, progress_disabled
from adaptrix_core.cli.output import quiet_libraries as _quiet_libraries


def export_options(command: Callable) -> Callable:
    """``--model``, ``--config`` and ``--adapters-dir`` (the store decides the LoRA slots)."""

    @functools.wraps(command)
    def wrapper(*args: Any, model_id, config_path, adapters_dir, **kwargs: Any) -> Any:
        return command(*args, model_id=model_id, config_path=config_path, adapters_dir=adapters_dir, **kwargs)

    wrapper = click.option("--adapters-dir", help="Adapter store whose adapters' layers get LoRA slots (default: ./adapters).")(wrapper)
    wrapper = click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")(wrapper)
    return click.option("--model", "-m", "model_id", help="Model id: 'default', a folder, a .gguf file or a cached hub id.")(wrapper)


@click.group()
def export() -> None:
    """Build a backend's model files ahead of time (the ONNX graph), into the cache."""


@export.command("onnx")
@click.option("--precision", type=click.Choice(["int4", "int8", "fp32"]),
              help="Weight precision (default: plugins.onnx.precision, int4).")
@export_options
@json_option
@handle_errors
def export_onnx(precision: str | None, model_id, config_path, adapters_dir, as_json: bool) -> None:
    """Build the ONNX graph of the model (with LoRA slots for the store's adapters) into the cache."""
    opts = EngineOptions(model_id, None, "onnx", config_path, adapters_dir)
    config = opts.config()
    if precision is not None:
        plugins = {**config.plugins, "onnx": {**config.plugins.get("onnx", {}), "precision": precision}}
        config = config.model_copy(update={"plugins": plugins})
    _quiet_libraries()
    info = _export("onnx", config, as_json)
    if as_json:
        _emit_json(info)
        return
    from rich.table import Table

    table = Table(title="ONNX model", show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    size = info.pop("bytes", None)
    for key, value in info.items():
        table.add_row(key, str(value))
    if size is not None:
        table.add_row("size", f"{size / 2**20:,.1f} MiB")
    _console().print(table)


def _export(backend_name: str, config: Any, as_json: bool) -> dict[str, Any]:
    """Load the backend as the engine would, then let it build its files with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from adaptrix_core.errors import BackendNotFoundError, PluginError
    from adaptrix_core.models.families import detect_family
    from adaptrix_core.models.source import resolve_model
    from adaptrix_core.registry import collect

    registry = collect()
    if backend_name not in registry.backends:
        raise BackendNotFoundError(f"Backend {backend_name!r} is not registered. Registered backends: "
                                   f"{', '.join(sorted(registry.backends)) or 'none'}.")
    backend = registry.backends[backend_name]()
    if not callable(getattr(backend, "export", None)):
        raise PluginError(f"Backend {backend_name!r} has nothing to export (it has no export method).")
    if callable(getattr(backend, "configure", None)):
        backend.configure(config)
    source = resolve_model(config.model.model_id)
    try:
        description = backend.load(source, config.model, config.resolved_cache_dir())
        family = detect_family(registry.families, description.model_type, description.architectures,
                               source.canonical_id, forced=config.model.family)
        with Progress(TextColumn("building the {task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=_console(stderr=True), disable=progress_disabled(as_json)) as bar:
            task = bar.add_task("build", total=None, stage="ONNX model")

            def report(stage: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, stage=f"ONNX model: {stage}")

            info = backend.export(family, progress=report)
    finally:
        backend.close()
    return {"model": config.model.model_id, "family": family.name, **info}
