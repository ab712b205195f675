"""How the CLI reports: results on stdout, errors as one plain line on stderr, ``--verbose``/``--quiet``.

Every failure becomes ``Error: <message>`` on one stderr line (never wrapped, never a traceback unless
``--verbose`` asks for one of an internal error) and a non-zero exit status: 1 for errors, 2 for
usage errors (click's), 130 for an interrupt. With ``--json`` stdout also gets
``{"error": {"type": ..., "message": ...}}``. Engine messages name Python parameters; the CLI
rewrites the known ones into its flags (``overwrite=True`` -> ``--overwrite``).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from adaptrix_core.errors import AdaptrixError

log = logging.getLogger("adaptrix_core.cli")

INTERRUPTED_EXIT = 130
_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2

#: Engine parameter names and the CLI flags that set them.
FLAG_NAMES = {
    "max_new_tokens": "--max-new-tokens", "top_p": "--top-p", "task_type": "--task-type",
    "adapters_dir": "--adapters-dir", "top_k": "--top-k", "min_score": "--min-score", "data_dir": "--data-dir",
    "chunk_size": "--chunk-size", "chunk_overlap": "--chunk-overlap", "index_type": "--index-type",
    "eval_split": "--eval-split", "eval_data": "--eval-data", "batch_size": "--batch-size",
    "learning_rate": "--lr", "target_modules": "--target-modules", "model_id": "--model",
    "files_only": "--files-only", "ignore_eos": "--ignore-eos",
}
_FLAG_PATTERN = re.compile(r"(?<![\w.\-'\"/\\])(" + "|".join(FLAG_NAMES) + r")(?![\w/\\])")
#: Python call syntax in engine messages and what a CLI user types instead.
_PHRASES = (
    (re.compile(r"(?<![\w.\-])overwrite=True\b"), "--overwrite"),
    (re.compile(r"(?<![\w.\-])model_id='([^']*)'"), r"--model \1"),
    (re.compile(r" \(or the conversation: engine\.reset_context\(\)\)"), ""),
)


@dataclass
class OutputSettings:
    """What the global flags asked for; reset at the start of every invocation."""

    verbose: bool = False
    quiet: bool = False


_settings = OutputSettings()


def settings() -> OutputSettings:
    """The ``--verbose`` / ``--quiet`` choice of the running invocation."""
    return _settings


def reset_settings() -> None:
    global _settings
    _settings = OutputSettings()


def configure(verbose: bool, quiet: bool) -> Callable[[], None]:
    """Apply ``--verbose`` / ``--quiet``; return the function that undoes the logging changes."""
    global _settings
    _settings = OutputSettings(verbose=verbose, quiet=quiet)
    if not verbose:
        return lambda: None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    from transformers.utils import logging as transformers_logging

    previous_verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_info()
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        transformers_logging.disable_propagation()
        transformers_logging.enable_default_handler()
        transformers_logging.set_verbosity(previous_verbosity)

    return undo


def quiet_libraries() -> None:
    """Keep library chatter (deprecation notes, legacy-tokenizer warnings) out of the output, unless --verbose."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if _settings.verbose:
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module=r"(transformers|torch|peft|huggingface_hub|sentence_transformers)(\.|$)")


def console(stderr: bool = False):
    """A rich console for tables and styled lines (never for error messages or model output)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def progress_disabled(as_json: bool) -> bool:
    """Progress bars are hidden with ``--json`` and ``--quiet``."""
    return as_json or _settings.quiet


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def cli_terms(message: str) -> str:
    """Name CLI flags instead of Python parameters: ``overwrite=True`` -> ``--overwrite``."""
    for pattern, replacement in _PHRASES:
        message = pattern.sub(replacement, message)
    return _FLAG_PATTERN.sub(lambda match: FLAG_NAMES[match.group(1)], message)


def one_line(text: str) -> str:
    """Collapse whitespace (newlines from YAML or pydantic messages) so the message stays on one line."""
    return " ".join(str(text).split())


def _validation_message(exc: Any) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "value"
        problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
    return "Invalid value: " + "; ".join(problems)


def _interrupted(exc: BaseException) -> bool:
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe(exc: BaseException) -> tuple[str, str, int, bool]:
    """(type name, message, exit status, internal?) of an exception reaching the CLI."""
    from pydantic import ValidationError

    name = type(exc).__name__
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, click.exceptions.Abort) and _interrupted(exc)):
        return "KeyboardInterrupt", "Interrupted", INTERRUPTED_EXIT, False
    if isinstance(exc, click.exceptions.Abort):
        return name, "Aborted (nothing was changed).", 1, False
    if isinstance(exc, click.ClickException):  # all usage errors share one type name, whatever click's subclass
        message = exc.format_message()
        context = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and context is not None:
            message = message if message.endswith((".", "?", "!")) else message + "."
            message += f" Try '{context.command_path} --help' for help."
        return ("UsageError" if isinstance(exc, click.UsageError) else name), message, exc.exit_code, False
    if isinstance(exc, AdaptrixError):
        return name, cli_terms(str(exc)), 1, False
    if isinstance(exc, ValidationError):
        return name, _validation_message(exc), 1, False
    if isinstance(exc, json.JSONDecodeError):
        return name, f"Invalid JSON: {exc}", 1, False
    if isinstance(exc, OSError):
        where = f": {exc.filename!r}" if exc.filename is not None else ""
        return name, f"{exc.strerror or exc}{where}", 1, False
    detail = f"{name}: {exc}" if str(exc) else name
    return name, f"internal error ({detail})", 1, True


def report(exc: BaseException, as_json: bool) -> int:
    """Print ``exc`` as one ``Error:`` line on stderr (and a JSON object on stdout); return the exit status."""
    name, message, status, internal = describe(exc)
    message = one_line(message)
    if internal:
        if _settings.verbose:
            click.echo("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(), err=True)
        else:
            message += "; run with --verbose for the traceback"
    if as_json:
        emit_json({"error": {"type": name, "message": message}})
    click.echo(f"Error: {message}", err=True)
    return status


def fail(message: str) -> None:
    """End a command that printed its report but failed overall: one ``Error:`` line, exit status 1."""
    click.echo(f"Error: {one_line(message)}", err=True)
    sys.exit(1)


def handle_errors(command: Callable) -> Callable:
    """Report any error of the command as one line (or a JSON error object with ``--json``) and exit non-zero.

    Click's own exceptions pass through: the ``adaptrix`` group formats usage errors the same way.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                raise  # the reader went away (``| head``): click exits quietly
            sys.exit(report(exc, bool(kwargs.get("as_json"))))

    return wrapper


class AdaptrixGroup(click.Group):
    """The root group: errors raised outside command bodies (usage errors, interrupts) get the same one-line report."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        reset_settings()
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as exc:  # a bare group: its help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except (Exception, KeyboardInterrupt) as exc:
            sys.exit(report(exc, as_json="--json" in argv))
        sys.exit(result if isinstance(result, int) else 0)
