"""Adapter commands: list, load, unload, active, train, and the ``adapters`` group (import, validate, ...)."""

from __future__ import annotations

import time
from typing import Any

import click

from adaptrix_core.cli import params as cli_params
from adaptrix_core.cli.common import EngineOptions, json_option, model_options
from adaptrix_core.cli.output import console as _console
from adaptrix_core.cli.output import emit_json as _emit_json
from adaptrix_core.cli.output import fail, handle_errors, progress_disabled
from adaptrix_core.cli.state import active_adapters_for, set_active_adapters


def _store(opts: EngineOptions):
    from adaptrix_core.adapters.store import AdapterManager

    return AdapterManager(opts.config().adapters.directory)


def _shown(text: Any) -> str:
    """Text for a rich table or line: markup escaped; names with control characters shown as repr."""
    from rich.markup import escape

    text = str(text)
    return escape(text if text.isprintable() else repr(text))


def _score(metrics: Any) -> str:
    """'47% (base 0%)' from performance_metrics, or '' when they hold no such numbers."""
    if not isinstance(metrics, dict):
        return ""
    metric = metrics.get("metric")
    value, base = (metrics.get(metric), metrics.get(f"base_{metric}", 0)) if isinstance(metric, str) else (None, None)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, base)):
        return ""
    return f"{value:.0%} (base {base:.0%})"


def _print_listing(rows: list[dict[str, Any]], active: list[str]) -> None:
    from rich.table import Table

    table = Table(title="Adapters")
    for column in ("name", "active", "layers", "rank", "held-out score", "description / problem"):
        table.add_column(column)
    for row in rows:
        layers = row.get("target_layers")
        table.add_row(_shown(row["name"]), "yes" if row["name"] in active else "",
                      f"{layers[0]}-{layers[-1]}" if layers else ("all" if row.get("rank") else ""),
                      str(row.get("rank") or ""), _score(row.get("performance_metrics")),
                      f"[red]{_shown(row['problem'])}[/]" if row.get("problem") else _shown(row.get("description", "")))
    _console().print(table)


def _list(opts: EngineOptions, as_json: bool) -> None:
    config = opts.config()
    active = active_adapters_for(config)
    rows = []
    for listing in _store(opts).list():
        meta = listing.metadata
        rows.append({"name": listing.name, "active": listing.name in active, "problem": listing.problem,
                     **({"description": meta.description, "target_layers": meta.target_layers, "rank": meta.rank,
                         "performance_metrics": meta.performance_metrics, "version": meta.version} if meta else {})})
    if as_json:
        _emit_json({"adapters": rows, "active": active, "directory": config.adapters.directory})
    else:
        _print_listing(rows, active)


@click.command("list")
@model_options
@json_option
@handle_errors
def list_command(opts: EngineOptions, as_json: bool) -> None:
    """List the adapters in the store (alias: list-adapters)."""
    _list(opts, as_json)


@click.command("list-adapters")
@model_options
@json_option
@handle_errors
def list_adapters_command(opts: EngineOptions, as_json: bool) -> None:
    """List the adapters in the store (alias of list)."""
    _list(opts, as_json)


@click.command()
@click.argument("names", nargs=-1, required=True)
@model_options
@json_option
@handle_errors
def load(names: tuple[str, ...], opts: EngineOptions, as_json: bool) -> None:
    """Validate adapters against the model, load them, and make them active for later queries."""
    cli_params.check_stored_adapters(opts.config().adapters.directory, names)
    timings = {}
    with opts.engine() as engine:
        engine.initialize()
        for name in names:
            started = time.perf_counter()
            engine.load_adapter(name)
            timings[name] = round((time.perf_counter() - started) * 1000, 1)
        report = engine.memory_report()
    config = opts.config()
    active = list(dict.fromkeys(active_adapters_for(config) + list(names)))
    set_active_adapters(config, active)
    data = {"loaded": list(names), "load_ms": timings, "adapter_bytes": {n: report["adapters"][n] for n in names if n in report["adapters"]},
            "active": active}
    if as_json:
        _emit_json(data)
        return
    for name in names:
        _console().print(f"loaded [bold]{name}[/] in {timings[name]} ms ({data['adapter_bytes'].get(name, 0) / 2**20:.2f} MiB)")
    _console().print(f"active: {', '.join(active)}")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "unload_all", is_flag=True, help="Deactivate every adapter.")
@model_options
@json_option
@handle_errors
def unload(names: tuple[str, ...], unload_all: bool, opts: EngineOptions, as_json: bool) -> None:
    """Stop using adapters in later queries (they stay in the store)."""
    config = opts.config()
    active = active_adapters_for(config)
    missing = [name for name in names if name not in active]
    if missing and not unload_all:
        from adaptrix_core.errors import AdapterNotFoundError

        raise AdapterNotFoundError(f"Not active: {', '.join(missing)} (active: {', '.join(active) or 'none'}).")
    remaining = [] if unload_all else [name for name in active if name not in names]
    set_active_adapters(config, remaining)
    if as_json:
        _emit_json({"active": remaining})
    else:
        _console().print(f"active: {', '.join(remaining) or 'none (base model)'}")


@click.command()
@model_options
@json_option
@handle_errors
def active(opts: EngineOptions, as_json: bool) -> None:
    """Show the adapters that queries use when they name none."""
    names = active_adapters_for(opts.config())
    if as_json:
        _emit_json({"active": names})
    else:
        _console().print(", ".join(names) or "none (base model)")


def _layers_option(value: str) -> Any:
    if value in ("middle", "quartiles", "all"):
        return value
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("use middle, quartiles, all or comma-separated indices", param_hint="--layers") from None


@click.command()
@click.option("--name", required=True, help="Name of the new adapter.")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False), help="JSONL training data.")
@click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), help="Held-out JSONL (default: --eval-split of --data).")
@click.option("--layers", default="middle", show_default=True, help="middle, quartiles, all, or indices like 10,11,12.")
@click.option("--target-modules", help="Comma-separated projection names (default: the family's).")
@click.option("--rank", default=16, show_default=True, type=cli_params.POSITIVE)
@click.option("--alpha", default=32.0, show_default=True, type=cli_params.POSITIVE_FLOAT)
@click.option("--dropout", default=0.05, show_default=True, type=cli_params.SHARE)
@click.option("--epochs", default=3, show_default=True, type=cli_params.POSITIVE)
@click.option("--lr", "learning_rate", default=2e-4, show_default=True, type=cli_params.POSITIVE_FLOAT)
@click.option("--batch-size", default=8, show_default=True, type=cli_params.POSITIVE)
@click.option("--eval-split", default=0.1, show_default=True, type=cli_params.SHARE)
@click.option("--seed", default=0, show_default=True, type=cli_params.SEED)
@click.option("--metric", default="auto", show_default=True, type=click.Choice(["auto", "exact_match", "json_match"]))
@click.option("--description", default="", help="What the adapter does (routers read it).")
@click.option("--keywords", help="Comma-separated routing keywords.")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter of that name.")
@model_options
@json_option
@handle_errors
def train(name, data_path, eval_data, layers, target_modules, rank, alpha, dropout, epochs, learning_rate, batch_size,
          eval_split, seed, metric, description, keywords, overwrite, opts: EngineOptions, as_json: bool) -> None:
    """Train a LoRA adapter on a JSONL file (prompt/response or messages) and save it to the store."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    _check_training_inputs(name, data_path, eval_data, overwrite, opts)
    layers = _layers_option(layers)
    with opts.engine() as engine:
        engine.initialize()
        with Progress(TextColumn("training {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                      console=_console(stderr=True), disable=progress_disabled(as_json)) as bar:
            task = bar.add_task("train", total=None, name=name, loss="-")

            def progress(step: int, total: int, loss: float) -> None:
                bar.update(task, completed=step, total=total, loss=f"{loss:.4f}")

            meta = engine.train_adapter(
                name, data_path, eval_data=eval_data, layers=layers,
                target_modules=target_modules.split(",") if target_modules else None, rank=rank, alpha=alpha,
                dropout=dropout, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                eval_split=eval_split, seed=seed, metric=metric, description=description,
                keywords=[k.strip() for k in keywords.split(",")] if keywords else None, overwrite=overwrite,
                progress=progress,
            )
    if as_json:
        _emit_json(meta.model_dump())
        return
    metrics = meta.performance_metrics
    _console().print(f"saved adapter [bold]{meta.name}[/] (layers {meta.target_layers}, rank {meta.rank})")
    if "metric" in metrics:
        m = metrics["metric"]
        _console().print(f"held-out {m}: adapter {metrics[m]:.1%}, base model {metrics['base_' + m]:.1%} "
                         f"({metrics['eval_examples']} examples)")


def _check_training_inputs(name: str, data_path: str, eval_data: str | None, overwrite: bool, opts: EngineOptions) -> None:
    """What train can refuse without the model: the name, a taken name, unreadable or malformed data."""
    from adaptrix_core.adapters.metadata import check_adapter_name
    from adaptrix_core.errors import AdapterExistsError
    from adaptrix_core.training.data import load_examples

    check_adapter_name(name)
    if _store(opts).path(name).exists() and not overwrite:
        raise AdapterExistsError(f"Adapter {name!r} already exists in the store; pass --overwrite to retrain it.")
    load_examples(data_path)
    if eval_data is not None:
        load_examples(eval_data)


@click.group()
def adapters() -> None:
    """Manage the adapter store: import, validate, export, delete."""


@adapters.command("list")
@model_options
@json_option
@handle_errors
def adapters_list(opts: EngineOptions, as_json: bool) -> None:
    """List the adapters in the store."""
    _list(opts, as_json)


@adapters.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Name in the store.")
@click.option("--description", default="", help="What the adapter does.")
@click.option("--keywords", help="Comma-separated routing keywords.")
@click.option("--base-model", help="Model it was trained on (hub id, name or path), when its adapter_config.json "
                                     "names another path or id for these same weights.")
@click.option("--overwrite", is_flag=True)
@model_options
@json_option
@handle_errors
def adapters_import(path, name, description, keywords, base_model, overwrite, opts: EngineOptions, as_json: bool) -> None:
    """Check a PEFT LoRA folder made elsewhere against the model, then copy it into the store."""
    from pathlib import Path

    from adaptrix_core.adapters.metadata import check_adapter_name
    from adaptrix_core.adapters.store import check_peft_folder
    from adaptrix_core.errors import AdapterExistsError, AdapterIncompatibleError

    check_adapter_name(name)  # cheap checks first: loading the model takes seconds
    check_peft_folder(Path(path))
    store = _store(opts)
    if store.path(name).exists() and not overwrite:
        raise AdapterExistsError(f"Adapter {name!r} already exists in {str(store.directory)!r}; use --overwrite to replace it.")
    routing = {"keywords": [k.strip() for k in keywords.split(",")]} if keywords else None
    with opts.engine() as engine:
        try:
            meta = engine.import_adapter(path, name, base_model=base_model, overwrite=overwrite,
                                         description=description, routing=routing)
        except AdapterIncompatibleError as exc:
            if any(problem.startswith("The adapter was trained on") for problem in exc.problems):
                served = engine.get_model_info()["base_model"]
                raise AdapterIncompatibleError(name, [*exc.problems, (
                    "If it was trained on the very weights served here, say so with "
                    f"--base-model {served!r} (or the path it was trained from)."
                )]) from None
            raise
    if as_json:
        _emit_json(meta.model_dump())
    else:
        _console().print(f"imported [bold]{meta.name}[/] (rank {meta.rank}, targets {', '.join(meta.target_modules)}, "
                         f"base {meta.base_model or 'unknown'})")


@adapters.command("validate")
@click.argument("names", nargs=-1)
@click.option("--files-only", is_flag=True, help="Check files and checksums without loading the model.")
@model_options
@json_option
@handle_errors
def adapters_validate(names, files_only: bool, opts: EngineOptions, as_json: bool) -> None:
    """Check adapters' files, checksums and (unless --files-only) their fit to the model; exit 1 if any fails."""
    from adaptrix_core.errors import AdapterError

    store = _store(opts)
    for name in names:
        store.path(name)  # an invalid name is bad input, not a failed check
    unknown = [name for name in names if not store.path(name).is_dir()]
    if unknown:
        from adaptrix_core.errors import AdapterNotFoundError

        raise AdapterNotFoundError(f"No adapter named {', '.join(map(repr, unknown))} in {str(store.directory)!r} "
                                   f"(available: {', '.join(store.names()) or 'none'}).")
    names = names or tuple(store.names())
    results = {}
    engine = None if files_only else opts.engine().initialize()
    try:
        for name in names:
            try:
                if engine is None:
                    store.validate(name)
                else:
                    engine.check_stored_adapter(name)
                results[name] = {"valid": True, "problem": None}
            except AdapterError as exc:
                results[name] = {"valid": False, "problem": str(exc), "error": type(exc).__name__}
            except Exception as exc:  # one broken adapter must not hide the verdict on the others
                results[name] = {"valid": False, "problem": f"unexpected error: {exc}", "error": type(exc).__name__}
    finally:
        if engine is not None:
            engine.cleanup()
    if as_json:
        _emit_json({"adapters": results})
    else:
        for name, result in results.items():
            mark = "[green]ok[/]" if result["valid"] else f"[red]{result['error']}[/]: {_shown(result['problem'])}"
            _console().print(f"{_shown(name)}: {mark}")
    failed = [name for name, result in results.items() if not result["valid"]]
    if failed:
        fail(f"{len(failed)} of {len(results)} adapters failed validation: {', '.join(failed)}.")


@adapters.command("export")
@click.argument("name")
@click.argument("destination", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
@model_options
@json_option
@handle_errors
def adapters_export(name, destination, overwrite, opts: EngineOptions, as_json: bool) -> None:
    """Copy a validated adapter out as a PEFT folder (loadable by PEFT, vLLM, LoRAX)."""
    path = _store(opts).export(name, destination, overwrite=overwrite)
    if as_json:
        _emit_json({"exported": name, "path": str(path)})
    else:
        _console().print(f"exported {name} to {path}")


@adapters.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@model_options
@json_option
@handle_errors
def adapters_delete(name, yes, opts: EngineOptions, as_json: bool) -> None:
    """Remove an adapter from the store."""
    if not yes and not as_json:
        click.confirm(f"Delete adapter {name!r} from the store?", abort=True)
    _store(opts).delete(name)
    config = opts.config()
    set_active_adapters(config, [n for n in active_adapters_for(config) if n != name])
    if as_json:
        _emit_json({"deleted": name})
    else:
        _console().print(f"deleted {name}")
