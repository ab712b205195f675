"""Router commands: ``adaptrix router list | fit | eval``."""

from __future__ import annotations

import click

from adaptrix_core.cli import params as cli_params
from adaptrix_core.cli.common import EngineOptions, json_option, model_options
from adaptrix_core.cli.output import console as _console
from adaptrix_core.cli.output import emit_json as _emit_json
from adaptrix_core.cli.output import handle_errors


@click.group()
def router() -> None:
    """Adapter routers: list them, fit them, evaluate them on labelled prompts."""


@router.command("list")
@json_option
@handle_errors
def router_list(as_json: bool) -> None:
    """List the registered routers and the plugins that provide them."""
    from adaptrix_core.registry import collect

    registry = collect()
    rows = [{"name": name, "plugin": registry.provided_by["routers"][name],
             "doc": (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""}
            for name, factory in sorted(registry.routers.items())]
    if as_json:
        _emit_json({"routers": rows})
        return
    from rich.table import Table

    table = Table(title="Routers")
    for column in ("router", "plugin", "what it does"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["plugin"], row["doc"])
    _console().print(table)


@router.command("fit")
@click.option("--router", "router_name", default="classifier", show_default=True, help="Router to fit.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), help="Labelled JSONL (prompt, label); default: adapters' examples + off-topic prompts.")
@model_options
@json_option
@handle_errors
def router_fit(router_name: str, data: str | None, opts: EngineOptions, as_json: bool) -> None:
    """Train the classifier head or calibrate the semantic thresholds; saves them beside the adapters."""
    from adaptrix_core.routing.service import load_labelled

    cli_params.check_router_name(router_name)
    if data is not None:
        load_labelled(data)  # malformed data is refused before any model loads
    engine = opts.engine(router=router_name)
    result = engine.fit_router(router_name, data)
    if as_json:
        _emit_json(result)
    else:
        _console().print(f"fitted [bold]{router_name}[/]: {result}")


@router.command("eval")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Labelled JSONL (prompt, label).")
@click.option("--router", "router_names", multiple=True, help="Router(s) to evaluate (default: every registered router).")
@model_options
@json_option
@handle_errors
def router_eval(data: str, router_names: tuple[str, ...], opts: EngineOptions, as_json: bool) -> None:
    """Accuracy, macro-F1, confusion matrix and routing latency on labelled prompts."""
    from adaptrix_core.registry import collect
    from adaptrix_core.routing.service import load_labelled

    names = router_names or tuple(sorted(collect().routers))
    for name in names:
        cli_params.check_router_name(name)
    load_labelled(data)  # malformed data is refused before any model loads
    engine = opts.engine(router=names[0])
    results = [engine.evaluate_router(data, name) for name in names]
    if as_json:
        _emit_json({"results": results})
        return
    from rich.table import Table

    console = _console()
    summary = Table(title=f"Routing on {data}")
    for column in ("router", "examples", "accuracy", "macro-F1", "p50 ms", "p95 ms"):
        summary.add_column(column, justify="right")
    for result in results:
        summary.add_row(result["router"], str(result["examples"]), f"{result['accuracy']:.1%}", f"{result['macro_f1']:.3f}",
                        f"{result['latency_ms']['p50']:.2f}", f"{result['latency_ms']['p95']:.2f}")
    console.print(summary)
    for result in results:
        labels = list(result["confusion"])
        matrix = Table(title=f"{result['router']}: confusion (rows: truth, columns: predicted)")
        matrix.add_column("")
        for label in labels:
            matrix.add_column(label, justify="right")
        for truth in labels:
            matrix.add_row(truth, *[str(result["confusion"][truth][p]) for p in labels])
        console.print(matrix)
