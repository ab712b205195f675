"""The ``adaptrix`` command line: query, info/status, plugins; every command takes ``--json``."""

from __future__ import annotations


import functools
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

import click

from adaptrix_core import cli_params
from adaptrix_core.cli_output import (  # noqa: F401  (the command modules import these names from here)
    AdaptrixGroup,
    configure,
    console as _console,
    emit_json as _emit_json,
    handle_errors,
    progress_disabled,
    quiet_libraries as _quiet_libraries,
    settings,
)

log = logging.getLogger("adaptrix_core.cli")


@dataclass
class EngineOptions:
    """The model-related flags every model-loading command shares."""

    model_id: str | None
    device: str | None
    backend: str | None
    config_path: str | None
    adapters_dir: str | None
    data_dir: str | None = None

    def config(self):
        from adaptrix_core.config import load_config

        cli_params.check_folder_option(self.adapters_dir, "--adapters-dir")
        cli_params.check_folder_option(self.data_dir, "--data-dir")
        return load_config(path=self.config_path, overrides={
            "model": {"model_id": self.model_id, "device": self.device, "backend": self.backend},
            "adapters": {"directory": self.adapters_dir},
            "rag": {"data_dir": self.data_dir},
        })

    def engine(self, router: str | None = None):
        from adaptrix_core.engine import ModularAdaptrixEngine

        _quiet_libraries()
        config = self.config()
        log.info("model %s (device %s, backend %s), adapters in %s", config.model.model_id, config.model.device,
                 config.model.backend, config.adapters.directory)
        return ModularAdaptrixEngine(config=config, router=router)


def model_options(command: Callable) -> Callable:
    """Options shared by commands that load a model; the command receives ``opts: EngineOptions``."""

    @functools.wraps(command)
    def wrapper(*args: Any, model_id, device, backend, config_path, adapters_dir, **kwargs: Any) -> Any:
        return command(*args, opts=EngineOptions(model_id, device, backend, config_path, adapters_dir), **kwargs)

    options = [
        click.option("--model", "-m", "model_id", help="Model id: 'default', a folder, a .gguf file or a cached hub id."),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--backend", help="Backend plugin name (default: hf)."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file."),
        click.option("--adapters-dir", help="Adapter store folder (default: ./adapters)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(command)


@click.group(cls=AdaptrixGroup)
@click.option("--verbose", "-v", is_flag=True, help="Show library logging (INFO) and the traceback of internal errors.")
@click.option("--quiet", "-q", is_flag=True, help="Hide progress bars and non-essential lines (results still print).")
@click.version_option(package_name="adaptrix")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Adaptrix: a small language model with many task-specific LoRA adapters.

    Errors are printed as one line on stderr ("Error: ...") with a non-zero exit status (1; 2 for
    usage errors; 130 when interrupted); with --json, stdout also gets {"error": {"type", "message"}}.
    """
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet cannot be used together.", ctx=ctx)
    ctx.call_on_close(configure(verbose, quiet))


def parse_adapter_option(value: str | None) -> Any:
    """``--adapter`` values: a name, ``a,b`` (stacked), ``a=0.7,b=0.3`` (weighted), ``none`` or ``auto``."""
    import math

    if value is None:
        return None
    if value.lower() == "none":
        return {}
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise click.BadParameter(f"{value!r} names no adapter; use a name, 'a,b', 'a=0.7,b=0.3', 'none' or 'auto'.",
                                 param_hint="'--adapter'")
    if any("=" in part for part in parts):
        weights = {}
        for part in parts:
            name, _, weight = part.partition("=")
            try:
                weights[name.strip()] = float(weight)
            except ValueError:
                raise click.BadParameter(f"weight {weight!r} of adapter {name!r} is not a number", param_hint="--adapter")
            if not math.isfinite(weights[name.strip()]):
                raise click.BadParameter(f"weight {weight!r} of adapter {name!r} is not finite", param_hint="--adapter")
        return weights
    return parts[0] if len(parts) == 1 else parts


@cli.command()
@click.argument("prompt")
@model_options
@click.option("--adapter", "-a", help="Adapter name, 'a,b', 'a=0.7,b=0.3', 'none', or 'auto' (routing).")
@click.option("--router", "router_name", help="Router for --adapter auto: keyword, semantic, classifier, hybrid.")
@click.option("--max-new-tokens", type=cli_params.MAX_NEW_TOKENS_TYPE, help="Upper bound on generated tokens.")
@click.option("--temperature", type=cli_params.TEMPERATURE, help="0 for greedy decoding (below 1e-5 counts as 0).")
@click.option("--top-p", type=cli_params.TOP_P, help="Nucleus sampling mass in (0, 1].")
@click.option("--seed", type=cli_params.SEED, help="Seed for reproducible sampling (0 to 2**63 - 1).")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--task-type", help="Preset: general, code, math, creative.")
@click.option("--stream/--no-stream", default=False, help="Print the answer as it is generated.")
@click.option("--rag", is_flag=True, help="Answer from the document index (adaptrix index add ...), citing sources.")
@click.option("--top-k", type=cli_params.POSITIVE, help="Passages retrieved with --rag (default: rag.top_k).")
@click.option("--data-dir", help="Index folder for --rag (default: rag.data_dir, ./rag_index).")
@json_option
@handle_errors
def query(prompt: str, opts: EngineOptions, adapter, router_name, max_new_tokens, temperature, top_p, seed, stop, task_type,
          stream, rag, top_k, data_dir, as_json) -> None:
    """Answer PROMPT with the model (and the active adapters, or --adapter)."""
    from adaptrix_core.cli_state import active_adapters_for
    from adaptrix_core.generation import check_prompt

    opts = replace(opts, data_dir=data_dir)
    check_prompt(prompt)
    cli_params.check_texts(stop, "--stop")
    if any(not s for s in stop):
        raise click.BadParameter("a stop string cannot be empty.", param_hint="'--stop'")
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
           "stop": list(stop) or None, "task_type": task_type}
    gen = {k: v for k, v in gen.items() if v is not None}
    config = opts.config()
    chosen = parse_adapter_option(adapter)
    if chosen is None:
        chosen = active_adapters_for(config) or None
    gen["adapter"] = chosen if chosen != {} else None
    if router_name and chosen is None:
        gen["adapter"] = "auto"
    if gen["adapter"] == "auto" and not (router_name or config.router.name):
        raise click.BadParameter("'auto' needs a router: add --router keyword, semantic, classifier or hybrid "
                                 "(or set router.name in the config).", param_hint="'--adapter'")
    cli_params.check_router_name(router_name)
    cli_params.check_stored_adapters(config.adapters.directory, cli_params.adapter_names(gen["adapter"]))
    with opts.engine(router=router_name) as engine:
        if rag:
            result = engine.query(prompt, use_rag=True, top_k=top_k, **gen)
            _print_result(result, as_json)
            return
        if stream and not as_json:
            for piece in engine.stream(prompt, **gen):
                click.echo(piece, nl=False)
            click.echo()
            return
        result = engine.query(prompt, **gen)
    _print_result(result, as_json)


def _print_result(result: Any, as_json: bool) -> None:
    if as_json:
        _emit_json(result.model_dump())
        return
    from rich.markup import escape

    click.echo(result.text)  # the answer as generated: no wrapping, no markup
    console = _console()
    for number, source in enumerate(result.sources, start=1):
        page = f" p.{source['page']}" if source.get("page") else ""
        console.print(f"[green]\\[{number}][/] {escape(str(source.get('source') or source.get('document')))}{page} "
                      f"(score {source.get('score', 0):.2f})", soft_wrap=True)
    if settings().quiet:
        return
    if result.routing:
        routing = result.routing
        scores = ", ".join(f"{name} {score:.2f}" for name, score in sorted(routing["scores"].items(), key=lambda i: -i[1]))
        chosen_text = ", ".join(f"{n} ({w:.2f})" for n, w in routing["selected"].items()) or "base model"
        console.print(f"[cyan]routing ({escape(routing['router'])}):[/] {escape(chosen_text)} · confidence "
                      f"{routing['confidence']:.2f} · scores: {escape(scores)}", soft_wrap=True)
    console.print(
        f"[dim]{result.family} · {escape(result.model_id)} · {result.completion_tokens} tokens · "
        f"{result.latency_ms:.0f} ms · adapters: {escape(', '.join(result.adapters) or 'none')}[/]", soft_wrap=True
    )


def _memory(engine_info: dict[str, Any]) -> dict[str, Any]:
    import psutil

    memory = {"process_rss_bytes": psutil.Process().memory_info().rss,
              "system_available_bytes": psutil.virtual_memory().available}
    if str(engine_info.get("device", "")).startswith("cuda"):
        import torch

        memory["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
        memory["cuda_reserved_bytes"] = torch.cuda.memory_reserved()
    return memory


def _show_info(opts: EngineOptions, as_json: bool) -> None:
    with opts.engine() as engine:
        info = engine.get_model_info()
        info["memory"] = _memory(info)
    if as_json:
        _emit_json(info)
        return
    from rich.table import Table

    table = Table(title="Adaptrix model", show_header=False)
    for key, value in info.items():
        if key == "memory":
            for mem_key, mem_value in value.items():
                table.add_row(mem_key, f"{mem_value / 2**20:,.0f} MiB")
        else:
            table.add_row(key, str(value))
    _console().print(table)


@cli.command()
@model_options
@json_option
@handle_errors
def info(opts: EngineOptions, as_json: bool) -> None:
    """Load the model and show what it is, where it runs and the memory it takes."""
    _show_info(opts, as_json)


@cli.command()
@model_options
@json_option
@handle_errors
def status(opts: EngineOptions, as_json: bool) -> None:
    """Same as ``info``: model, device and memory."""
    _show_info(opts, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def plugins(as_json: bool) -> None:
    """List loaded plugins and what each registered (and plugins that failed to load)."""
    from adaptrix_core.plugins import get_plugin_manager
    from adaptrix_core.registry import collect

    manager = get_plugin_manager()
    registry = collect(manager)
    report = registry.plugins_report(manager)
    if as_json:
        _emit_json({"plugins": report, "problems": registry.problems})
        return
    from rich.table import Table

    table = Table(title="Adaptrix plugins")
    for column in ("plugin", "provides", "status"):
        table.add_column(column, overflow="fold")
    for entry in report:
        provides = "; ".join(f"{kind[:-1] if kind != 'families' else 'family'}: {', '.join(entry[kind])}"
                             for kind in ("families", "backends", "routers") if entry[kind])
        status_text = "loaded" if entry["loaded"] else f"[red]failed: {entry['error']}[/]"
        table.add_row(entry["name"], provides, status_text)
    console = _console()
    console.print(table)
    for problem in registry.problems:
        console.print(f"[yellow]warning:[/] {problem}")


def main() -> None:
    cli(prog_name="adaptrix")


from adaptrix_core import cli_adapters, cli_export, cli_index, cli_router  # noqa: E402,F401  (register their commands on ``cli``)


if __name__ == "__main__":
    # ``python -m adaptrix_core.cli`` runs this file as ``__main__``; the command modules registered their
    # commands on the group of the importable ``adaptrix_core.cli``, so run that one.
    from adaptrix_core.cli import main as _package_main

    _package_main()
