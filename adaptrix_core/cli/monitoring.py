"""Monitoring commands: ``adaptrix stats`` (the request log; never loads a model) and ``adaptrix benchmark``.

``stats`` reads the log named by ``monitoring.path`` (default ``<cache_dir>/monitoring.sqlite``):
per adapter and per routing decision, count, errors, latency and TTFT p50/p95, tokens/s;
``--csv`` exports the raw rows, ``--plot`` draws a PNG (needs ``adaptrix[plot]``). ``benchmark``
measures one adapter against the base model on the current backend (see
``adaptrix_core.monitoring.benchmark``); its stages show on stderr unless ``--json`` or ``--quiet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adaptrix_core.cli import params as cli_params
from adaptrix_core.cli.common import EngineOptions, json_option, model_options
from adaptrix_core.cli.output import console as _console
from adaptrix_core.cli.output import emit_json as _emit_json
from adaptrix_core.cli.output import handle_errors, progress_disabled, settings
from adaptrix_core.generation.params import MAX_NEW_TOKENS


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.2f} MiB"


def _check_stats_options(since: str | None, adapter: str | None, plot_path: str | None) -> None:
    from adaptrix_core.errors import MonitoringError
    from adaptrix_core.monitoring.stats import parse_since

    if since is not None:
        try:
            parse_since(since)
        except MonitoringError as exc:
            raise click.BadParameter(str(exc), param_hint="'--since'") from None
    if adapter is not None and adapter.lower() != "none":
        from adaptrix_core.adapters.metadata import check_adapter_name

        check_adapter_name(adapter)
    if plot_path is not None:
        if Path(plot_path).suffix.lower() != ".png":
            raise click.BadParameter(f"{plot_path!r} does not end in .png; the plot is a PNG image.", param_hint="'--plot'")
        try:  # before anything is read or written
            import matplotlib.figure  # noqa: F401
        except ImportError:
            from adaptrix_core.errors import OptionalDependencyError
            from adaptrix_core.monitoring.stats import PLOT_INSTALL

            raise OptionalDependencyError(f"--plot needs matplotlib, which is not installed: {PLOT_INSTALL} "
                                          "(or pip install matplotlib).") from None


@click.command()
@click.option("--since", help="Only requests in this window: 30m, 1h, 2d, 1w, 1h30m (default: all kept rows).")
@click.option("--adapter", "adapter_name", help="Only requests that used this adapter ('none': the base model alone).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the raw request rows to this CSV file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw latency and tokens/s per adapter into this PNG file (needs adaptrix[plot]).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@json_option
@handle_errors
def stats(since: str | None, adapter_name: str | None, csv_path: str | None, plot_path: str | None,
          config_path: str | None, as_json: bool) -> None:
    """Requests recorded in the request log: per adapter and per route, count, errors, latency, TTFT, tokens/s."""
    from adaptrix_core.config import load_config
    from adaptrix_core.errors import MonitoringError
    from adaptrix_core.monitoring import stats as monitoring_stats

    _check_stats_options(since, adapter_name, plot_path)
    config = load_config(path=config_path)
    path = config.monitoring.resolved_path(config.cache_dir)
    loaded = monitoring_stats.load(path, since=since, adapter=adapter_name)
    rows, events, start = loaded if loaded is not None else ([], [], None)
    summary = monitoring_stats.summarize(rows, events)
    report: dict[str, Any] = {"path": str(path), "exists": loaded is not None, "enabled": config.monitoring.enabled,
                              "since": since, "window_start": None if start is None else monitoring_stats.iso(start),
                              "adapter": adapter_name, **summary}
    if csv_path is not None:
        monitoring_stats.write_csv(rows, csv_path)
        report["csv"] = {"path": csv_path, "rows": len(rows)}
    if plot_path is not None:
        if not rows:
            raise MonitoringError(f"No requests to plot in {str(path)!r}" + (f" since {since}" if since else "") +
                                  (f" for adapter {adapter_name!r}" if adapter_name else "") + "; widen --since or --adapter.")
        monitoring_stats.plot(rows, plot_path, title=f"Adaptrix requests{f' (last {since})' if since else ''}")
        report["plot"] = plot_path
    if as_json:
        _emit_json(report)
        return
    _print_stats(report)


def _print_stats(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if not report["exists"]:
        console.print(f"No requests recorded yet: the request log {escape(report['path'])} does not exist"
                      + ("" if report["enabled"] else " (monitoring.enabled is false)") + ".", soft_wrap=True)
    else:
        window = f" since {report['window_start']}" if report["window_start"] else ""
        console.print(f"[bold]{report['count']}[/] requests{escape(window)}, {report['errors']} errors · log "
                      f"{escape(report['path'])}", soft_wrap=True)
        columns = ("n", "err", "p50", "p95", "TTFT p50", "TTFT p95", "tok/s")

        def figures(group: dict[str, Any]) -> list[str]:
            return [str(group["count"]), str(group["errors"]), _ms(group["latency_ms"]["p50"]), _ms(group["latency_ms"]["p95"]),
                    _ms(group["ttft_ms"]["p50"]), _ms(group["ttft_ms"]["p95"]), _rate(group["tokens_per_s"]["p50"])]

        if report["by_adapter"]:
            table = Table(title="per adapter: requests, errors, latency and TTFT (ms), median tokens/s")
            for column in ("adapter", *columns):
                table.add_column(column, justify="left" if column == "adapter" else "right",
                                 overflow="fold" if column == "adapter" else "ellipsis", no_wrap=column != "adapter")
            for group in report["by_adapter"]:
                table.add_row(escape("base model" if group["adapter"] == "(base)" else group["adapter"]), *figures(group))
            console.print(table)
        if report["by_route"]:
            table = Table(title="per routing decision: mean confidence, requests, errors, latency and TTFT (ms), median tokens/s")
            for column in ("router -> chosen", "conf.", *columns):
                named = column.startswith("router")
                table.add_column(column, justify="left" if named else "right", overflow="fold" if named else "ellipsis",
                                 no_wrap=not named, min_width=12 if named else None)
            for group in report["by_route"]:
                chosen = "base model" if group["chosen"] == "(base)" else group["chosen"]
                confidence = "-" if group["confidence_mean"] is None else f"{group['confidence_mean']:.2f}"
                table.add_row(escape(f"{group['router']} -> {chosen}"), confidence, *figures(group))
            console.print(table)
        if report["adapter_events"]:
            table = Table(title="adapter events")
            for column in ("adapter", "event", "count", "median ms", "max ms"):
                table.add_column(column, justify="left" if column in ("adapter", "event") else "right")
            for event in report["adapter_events"]:
                table.add_row(escape(event["adapter"]), event["kind"], str(event["count"]), _ms(event["ms_p50"]),
                              _ms(event["ms_max"]))
            console.print(table)
    if "csv" in report:
        console.print(f"wrote {report['csv']['rows']} rows to {escape(report['csv']['path'])}", soft_wrap=True)
    if "plot" in report:
        console.print(f"wrote the plot to {escape(report['plot'])}", soft_wrap=True)


@click.command()
@click.argument("adapter")
@model_options
@click.option("--max-new-tokens", type=click.IntRange(2, MAX_NEW_TOKENS), default=32, show_default=True,
              help="Tokens generated per timed request (exactly that many: end-of-sequence is ignored).")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Interleaved rounds of base-model and adapter requests (medians are reported).")
@click.option("--eval-limit", type=cli_params.NON_NEGATIVE, default=20, show_default=True,
              help="Examples of the adapter's evaluation set to score (0: no scoring).")
@click.option("--prompt", help="Prompt of the timed requests (default: the adapter's first routing example).")
@json_option
@handle_errors
def benchmark(adapter: str, opts: EngineOptions, max_new_tokens: int, rounds: int, eval_limit: int,
              prompt: str | None, as_json: bool) -> None:
    """Measure ADAPTER against the base model: TTFT, decode tokens/s, switch cost, memory, task score."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from adaptrix_core.generation.params import check_prompt
    from adaptrix_core.monitoring.benchmark import run_benchmark

    if prompt is not None:
        check_prompt(prompt)
    config = opts.config()
    cli_params.check_stored_adapters(config.adapters.directory, [adapter])
    roots = [Path.cwd(), Path(config.adapters.directory).expanduser().resolve().parent]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=_console(stderr=True),
                  disable=progress_disabled(as_json), transient=True) as bar:
        task = bar.add_task(f"benchmark {adapter}", total=None)
        with opts.engine() as engine:
            report = run_benchmark(engine, adapter, max_new_tokens=max_new_tokens, rounds=rounds, eval_limit=eval_limit,
                                   prompt=prompt, roots=roots,
                                   progress=lambda stage: bar.update(task, description=f"benchmark {adapter}: {stage}"))
    if as_json:
        _emit_json(report)
        return
    _print_benchmark(report)


def _print_benchmark(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    base, adapted, name = report["base"], report["with_adapter"], report["adapter"]
    table = Table(title=f"{name} vs the base model · {report['base_model'] or report['model']} · {report['backend']} on "
                        f"{report['device']} ({report['dtype']}) · {report['max_new_tokens']} tokens · "
                        f"{report['rounds']} rounds (medians)")
    for column in ("", "base model", f"with {name}", "change"):
        table.add_column(escape(column), justify="left" if not column else "right")
    slowdown = report["decode_slowdown_percent"]
    table.add_row("time to first token (ms)", _ms(base["ttft_ms"]), _ms(adapted["ttft_ms"]), f"{report['ttft_extra_ms']:+.1f} ms")
    table.add_row("decode tokens/s", _rate(base["decode_tokens_per_s"]), _rate(adapted["decode_tokens_per_s"]),
                  "-" if slowdown is None else f"{slowdown:+.1f}% time/token")
    table.add_row("end-to-end tokens/s", _rate(base["tokens_per_s"]), _rate(adapted["tokens_per_s"]), "")
    console = _console()
    console.print(table)
    switch, memory, evaluation = report["switch"], report["memory"], report["evaluation"]
    console.print(f"switch cost: {switch['switch_ms']:+.1f} ms (one-token request after the base model "
                  f"{_ms(switch['after_base_ms'])} ms, after the same adapter {_ms(switch['after_same_adapter_ms'])} ms); "
                  f"load from the store: first {_ms(switch['first_load_ms'])} ms, again {_ms(switch['reload_ms'])} ms",
                  soft_wrap=True)
    console.print(f"memory: {_mib(memory['adapter_bytes'])} in the model, {_mib(memory['weights_file_bytes'])} on disk "
                  f"(base model weights {_mib(memory['base_model_bytes'])})", soft_wrap=True)
    if "skipped" in evaluation:
        if not settings().quiet:
            console.print(f"[dim]task score: not measured ({escape(evaluation['skipped'])})[/]", soft_wrap=True)
        return
    console.print(f"task score ({evaluation['metric']}, {evaluation['examples']} examples of "
                  f"{escape(evaluation['data'])}): adapter {evaluation['adapter_score']:.1%}, "
                  f"base model {evaluation['base_score']:.1%}", soft_wrap=True)
