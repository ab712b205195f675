"""The ``adaptrix`` command group: global flags, the built-in command groups, and plugins' commands.

Each command group lives in its own module and is attached here with ``add_command``; plugins add
theirs through the ``register_commands(cli)`` hook, as in ``llm`` and ``datasette``. Nothing here
imports torch or transformers: commands import them when they load a model.
"""

from __future__ import annotations

import logging

import click

from adaptrix_core.cli import adapters, export, index, monitoring, query, router, serve
from adaptrix_core.cli.output import AdaptrixGroup, configure, handle_errors
from adaptrix_core.cli.output import console as _console
from adaptrix_core.cli.output import emit_json as _emit_json

log = logging.getLogger("adaptrix.plugins")


class PluginCommandsGroup(AdaptrixGroup):
    """The root group: adds plugins' commands (``register_commands``) the first time commands are looked up.

    Plugin commands are added again when the plugin manager changes (``reload_plugins()``); a plugin
    whose hook fails is logged and skipped, and never replaces a built-in command.
    """

    def _plugin_commands(self) -> None:
        from adaptrix_core.plugins import get_plugin_manager

        manager = get_plugin_manager()
        if getattr(self, "_plugins_of", None) is manager:
            return
        for name in getattr(self, "_added_by_plugins", ()):
            self.commands.pop(name, None)
        self._plugins_of, self._added_by_plugins = manager, []
        builtin = set(self.commands)
        for impl in manager.hook.register_commands.get_hookimpls():
            staging = click.Group()
            try:
                impl.function(cli=staging)
            except Exception as exc:  # one broken plugin must not take the CLI down
                log.warning("plugin %r failed to add commands: %s", impl.plugin_name, exc)
                continue
            for name, command in staging.commands.items():
                if name in builtin:
                    log.warning("plugin %r tried to replace the built-in command %r; ignored", impl.plugin_name, name)
                    continue
                self.add_command(command, name)
                self._added_by_plugins.append(name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str):
        self._plugin_commands()
        return super().get_command(ctx, cmd_name)


@click.group(cls=PluginCommandsGroup)
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



@click.command()
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
        _emit_json({"plugins": report, "overrides": registry.overrides, "problems": registry.problems})
        return
    from rich.table import Table

    table = Table(title="Adaptrix plugins")
    for column in ("plugin", "provides", "status"):
        table.add_column(column, overflow="fold")
    for entry in report:
        provides = "; ".join(f"{kind[:-1] if kind != 'families' else 'family'}: {', '.join(entry[kind])}"
                             for kind in ("families", "backends", "routers") if entry[kind])
        status_text = "loaded" if entry["loaded"] else f"[red]failed: {entry['error']}[/]"
        if entry["overridden"]:
            status_text += f" [yellow](overridden: {', '.join(entry['overridden'])})[/]"
        table.add_row(entry["name"], provides, status_text)
    console = _console()
    console.print(table)
    for problem in registry.problems:
        console.print(f"[yellow]warning:[/] {problem}")



for _command in (query.query, query.info, query.status, plugins, adapters.list_command, adapters.list_adapters_command,
                 adapters.load, adapters.unload, adapters.active, adapters.train, adapters.adapters, index.index,
                 router.router, serve.serve, monitoring.stats, monitoring.benchmark, export.export):
    cli.add_command(_command)


def main() -> None:
    """The ``adaptrix`` console script."""
    cli(prog_name="adaptrix")
