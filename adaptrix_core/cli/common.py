"""What the model-loading commands share: the model flags, ``--json``, and the ``--adapter`` syntax."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from adaptrix_core.cli import params as cli_params
from adaptrix_core.cli.output import quiet_libraries

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

        quiet_libraries()
        config = self.config()
        log.info("model %s (device %s, backend %s), adapters in %s", config.model.model_id, config.model.device,
                 config.model.backend, config.adapters.directory)
        engine = ModularAdaptrixEngine(config=config, router=router)
        engine.monitor.source = "cli"  # the request log says who asked
        return engine


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
                raise click.BadParameter(f"weight {weight!r} of adapter {name!r} is not a number", param_hint="--adapter") from None
            if not math.isfinite(weights[name.strip()]):
                raise click.BadParameter(f"weight {weight!r} of adapter {name!r} is not finite", param_hint="--adapter")
        return weights
    return parts[0] if len(parts) == 1 else parts
