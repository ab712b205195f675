"""``adaptrix query``, ``info`` and ``status``: answer a prompt; show the model and its memory."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from adaptrix_core.cli import params as cli_params
from adaptrix_core.cli.common import EngineOptions, json_option, model_options, parse_adapter_option
from adaptrix_core.cli.output import console as _console
from adaptrix_core.cli.output import emit_json as _emit_json
from adaptrix_core.cli.output import handle_errors, settings


@click.command()
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
    from adaptrix_core.cli.state import active_adapters_for
    from adaptrix_core.generation.params import check_prompt

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
        from adaptrix_core.registry import collect

        raise click.BadParameter(f"'auto' needs a router: add --router with one of {', '.join(sorted(collect().routers))} "
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


@click.command()
@model_options
@json_option
@handle_errors
def info(opts: EngineOptions, as_json: bool) -> None:
    """Load the model and show what it is, where it runs and the memory it takes."""
    _show_info(opts, as_json)


@click.command()
@model_options
@json_option
@handle_errors
def status(opts: EngineOptions, as_json: bool) -> None:
    """Same as ``info``: model, device and memory."""
    _show_info(opts, as_json)
