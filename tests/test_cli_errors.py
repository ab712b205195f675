"""Bad input to every CLI command: one ``Error:`` line on stderr, a non-zero exit, no traceback, JSON with --json.

Cheap checks must run before the model loads: those cases pass ``--model /no/such/model``, so reaching
the model would fail with ModelNotFoundError instead of the expected error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptrix_core.cli import cli

ROOT = Path(__file__).resolve().parents[1]
NO_MODEL = "/no/such/model"


@pytest.fixture
def paths(tmp_path, monkeypatch):
    """A fresh store, index, cache and input files for one test."""
    monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ADAPTRIX_CONFIG", raising=False)
    (tmp_path / "adapters" / "taken").mkdir(parents=True)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "response": "y"}\n{not json\n')
    (tmp_path / "good.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}", "response": "yes", "label": "base"}) + "\n"
                                                 for w in "alpha beta gamma delta epsilon zeta".split()))
    (tmp_path / "bad.yaml").write_text("model: [\n  device: cpu\n")
    (tmp_path / "doc.txt").write_text("Some text to index.\n")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_error(result, args, exit_code: int, error_type: str | None = None, text: str | None = None) -> str:
    """Exactly one non-empty stderr line, ``Error: ...``; no traceback; the JSON error object with --json."""
    assert result.exit_code == exit_code, (args, result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
    message = lines[0][len("Error: "):]
    if text is not None:
        assert text in message, (args, message)
    if "--json" in args:
        error = json.loads(result.stdout)["error"]
        assert error["message"] == message
        if error_type is not None:
            assert error["type"] == error_type, (args, error)
    return message


def check(args: list[str], exit_code: int, error_type: str | None = None, text: str | None = None) -> str:
    """Run ``args`` with and without --json (after the subcommand) and check both reports."""
    message = assert_one_error(invoke(*args), args, exit_code, error_type, text)
    with_json = [*args, "--json"]
    assert assert_one_error(invoke(*with_json), with_json, exit_code, error_type, text) == message
    return message


def store(paths, model: str = NO_MODEL) -> list[str]:
    return ["--model", model, "--device", "cpu", "--adapters-dir", str(paths / "adapters")]


# -- query ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, code, error_type, text", [
    (["--max-new-tokens", "0"], 2, "UsageError", "'--max-new-tokens'"),
    (["--max-new-tokens", "1.5"], 2, "UsageError", "'--max-new-tokens'"),
    (["--max-new-tokens", str(10**30)], 2, "UsageError", "'--max-new-tokens'"),
    (["--temperature", "nan"], 2, "UsageError", "not a finite number"),
    (["--temperature", "-0.5"], 2, "UsageError", "'--temperature'"),
    (["--top-p", "0"], 2, "UsageError", "'--top-p'"),
    (["--seed", "-1"], 2, "UsageError", "'--seed'"),
    (["--seed", str(2**63)], 2, "UsageError", "'--seed'"),
    (["--seed", "1.5"], 2, "UsageError", "'--seed'"),
    (["--top-k", "0", "--rag"], 2, "UsageError", "'--top-k'"),
    (["--stop", ""], 2, "UsageError", "'--stop'"),
    (["--adapter", "a=lots"], 2, "UsageError", "not a number"),
    (["--adapter", "a=nan"], 2, "UsageError", "not finite"),
    (["--adapter", ","], 2, "UsageError", "names no adapter"),
    (["--adapter", "auto"], 2, "UsageError", "needs a router"),
    (["--adapter", "../evil"], 1, "InvalidAdapterNameError", "Invalid adapter name '../evil'"),
    (["--adapter", "nope"], 1, "AdapterNotFoundError", "No adapter named 'nope'"),
    (["--adapter", "taken=0.5,nope=0.5"], 1, None, None),
    (["--router", "nosuch"], 1, "ConfigError", "--router 'nosuch' is not registered"),
    (["--bogus"], 2, "UsageError", "--bogus"),
    (["--adapters-dir", "PLACEHOLDER_FILE"], 2, "UsageError", "is a file, not a folder"),
    (["--config", "PLACEHOLDER_YAML"], 1, "ConfigError", "is not valid YAML"),
])
def test_query_cheap_checks_run_before_the_model_loads(paths, extra, code, error_type, text):
    extra = [str(paths / "a-file") if e == "PLACEHOLDER_FILE" else str(paths / "bad.yaml") if e == "PLACEHOLDER_YAML" else e
             for e in extra]
    message = check(["query", "hello", *store(paths), *extra], code, error_type, text)
    assert "Model '/no/such/model'" not in message


@pytest.mark.parametrize("prompt", ["   ", "hi \udcff"])
def test_query_bad_prompt(paths, prompt):
    check(["query", prompt, *store(paths)], 1, "InvalidPromptError")


def test_query_engine_errors_name_cli_flags(paths, tiny_model_dir):
    message = check(["query", "hello", *store(paths, str(tiny_model_dir("llama"))), "--task-type", "poetry"], 1,
                    "InvalidGenerationParameterError", "Unknown --task-type 'poetry'")
    assert "task_type" not in message


def test_query_context_overflow_is_one_line(paths, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ADAPTRIX_MODEL__MAX_CONTEXT", "24")
    message = check(["query", "hello world " * 40, *store(paths, str(tiny_model_dir("llama")))], 1, "ContextOverflowError",
                    "context window holds 24 tokens")
    assert "engine." not in message


def test_messages_use_cli_terms_and_stay_on_one_line():
    from pydantic import BaseModel, ValidationError

    from adaptrix_core.cli.output import cli_terms, describe

    assert cli_terms("Adapter 'x' already exists; pass overwrite=True to replace it.") == \
        "Adapter 'x' already exists; pass --overwrite to replace it."
    assert cli_terms("max_new_tokens must be at least 1; top_p, task_type, adapters_dir") == \
        "--max-new-tokens must be at least 1; --top-p, --task-type, --adapters-dir"
    assert cli_terms("use model_id='default'.") == "use --model default."
    # config paths, quoted names and paths are left alone
    assert cli_terms("rag.chunk_size: too small; no adapter 'top_k' in '/data/top_p'") == \
        "rag.chunk_size: too small; no adapter 'top_k' in '/data/top_p'"

    class Point(BaseModel):
        x: int

    try:
        Point.model_validate({"x": "many"})
    except ValidationError as exc:
        name, message, status, internal = describe(exc)
    assert (name, status, internal) == ("ValidationError", 1, False) and message.startswith("Invalid value: x:")
    try:
        json.loads("{oops")
    except json.JSONDecodeError as exc:
        name, message, status, internal = describe(exc)
    assert (name, status, internal) == ("JSONDecodeError", 1, False) and message.startswith("Invalid JSON:")
    assert describe(FileNotFoundError(2, "No such file or directory", "/x"))[1] == "No such file or directory: '/x'"
    assert describe(KeyboardInterrupt())[1:3] == ("Interrupted", 130)
    assert describe(RuntimeError("tensor a (3) must match"))[1:] == ("internal error (RuntimeError: tensor a (3) must match)", 1, True)


# -- info, status, plugins ----------------------------------------------------------------------------

def test_info_and_status(paths, tiny_model_dir):
    check(["info", "--model", NO_MODEL], 1, "ModelNotFoundError", "/no/such/model")
    check(["info", "--model", str(tiny_model_dir("llama")), "--device", "quantum"], 1, None, "'quantum'")
    check(["status", "--model", str(tiny_model_dir("llama")), "--backend", "nope"], 1, "BackendNotFoundError", "'nope'")
    check(["status", "--config", str(paths / "missing.yaml")], 1, "ConfigError", "does not exist")


def test_plugins_usage_error():
    check(["plugins", "extra-argument"], 2, "UsageError", "extra-argument")


# -- adapter commands -----------------------------------------------------------------------------

def test_list_commands(paths):
    for command in (["list"], ["list-adapters"], ["adapters", "list"]):
        check([*command, "--adapters-dir", str(paths / "a-file")], 2, "UsageError", "'--adapters-dir'")
        check([*command, "--config", str(paths / "bad.yaml")], 1, "ConfigError")


def test_load_unload_active(paths):
    check(["load", "nope", *store(paths)], 1, "AdapterNotFoundError", "No adapter named 'nope'")
    check(["load", "../x", *store(paths)], 1, "InvalidAdapterNameError", "Invalid adapter name")
    check(["load", *store(paths)], 2, "UsageError", "NAMES")
    check(["unload", "nope", *store(paths)], 1, "AdapterNotFoundError", "Not active: nope")
    check(["active", "--config", str(paths / "bad.yaml")], 1, "ConfigError", "bad.yaml")


def test_train_checks_run_before_the_model_loads(paths):
    common = ["--data", str(paths / "good.jsonl"), *store(paths)]
    message = check(["train", "--name", "taken", *common], 1, "AdapterExistsError", "pass --overwrite to retrain it")
    assert "overwrite=True" not in message
    check(["train", "--name", "two words", *common], 1, "InvalidAdapterNameError", "Invalid adapter name")
    check(["train", "--name", "n", "--data", str(paths / "bad.jsonl"), *store(paths)], 1, "TrainingDataError", "line 2")
    check(["train", "--name", "n", "--data", str(paths / "missing.jsonl"), *store(paths)], 2, "UsageError", "'--data'")
    check(["train", "--name", "n", "--eval-data", str(paths / "bad.jsonl"), *common], 1, "TrainingDataError")
    check(["train", "--name", "n", "--layers", "a,b", *common], 2, "UsageError", "--layers")
    for flag, value in (("--rank", "0"), ("--epochs", "0"), ("--lr", "-1"), ("--lr", "inf"), ("--batch-size", "0"),
                        ("--eval-split", "1"), ("--dropout", "1.5"), ("--seed", "-2"), ("--alpha", "0")):
        check(["train", "--name", "n", flag, value, *common], 2, "UsageError", f"'{flag}'")
    assert not (paths / "adapters" / "n").exists()


@pytest.fixture
def trained(paths, tiny_model_dir, single_torch_thread):
    """A store holding one real (tiny) adapter, 'yes', and its PEFT export."""
    common = store(paths, str(tiny_model_dir("llama")))
    result = invoke("train", "--name", "yes", "--data", str(paths / "good.jsonl"), "--epochs", "1", "--eval-split", "0",
                    "--json", *common)
    assert result.exit_code == 0, result.output
    assert invoke("adapters", "export", "yes", str(paths / "exported"), *common).exit_code == 0
    return common


def test_adapters_subcommands(paths, trained):
    common = store(paths)
    check(["adapters", "import", str(paths / "missing"), "--name", "x", *common], 2, "UsageError", "'PATH'")
    check(["adapters", "import", str(paths / "adapters" / "taken"), "--name", "x", *common], 1, "AdapterCorruptError")
    message = check(["adapters", "import", str(paths / "exported"), "--name", "yes", *common], 1, "AdapterExistsError",
                    "--overwrite")
    assert "overwrite=True" not in message
    check(["adapters", "validate", "nope", *common], 1, "AdapterNotFoundError", "No adapter named 'nope'")
    check(["adapters", "validate", "../x", *common], 1, "InvalidAdapterNameError", "Invalid adapter name")
    check(["adapters", "export", "nope", str(paths / "out"), *common], 1, "AdapterNotFoundError")
    message = check(["adapters", "export", "yes", str(paths / "exported"), *common], 1, "AdapterExistsError", "--overwrite")
    assert "overwrite=True" not in message
    check(["adapters", "delete", "nope", "--yes", *common], 1, "AdapterNotFoundError")
    check(["adapters", "delete", "../x", "--yes", *common], 1, "InvalidAdapterNameError", "Invalid adapter name")
    aborted = invoke("adapters", "delete", "yes", *common)  # no --yes and nothing on stdin
    assert_one_error(aborted, [], 1, text="Aborted")
    assert (paths / "adapters" / "yes").is_dir()


def test_failed_validation_reports_then_one_error_line(paths, trained):
    weights = paths / "adapters" / "yes" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    result = invoke("adapters", "validate", "--files-only", "--json", *store(paths))
    assert result.exit_code == 1
    assert json.loads(result.stdout)["adapters"]["yes"]["error"] == "AdapterIntegrityError"
    # "taken" is an empty folder in the store: listed and reported as broken too, never skipped.
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "Error: 2 of 2 adapters failed validation: taken, yes."]


# -- index ----------------------------------------------------------------------------------------

def test_index_subcommands(paths):
    data = ["--data-dir", str(paths / "index")]
    check(["index", "add", str(paths / "missing.txt"), *data], 2, "UsageError", "missing.txt")
    check(["index", "add", str(paths / "doc.txt"), "--chunk-size", "8", *data], 2, "UsageError", "'--chunk-size'")
    check(["index", "add", str(paths / "doc.txt"), "--chunk-overlap", "-1", *data], 2, "UsageError", "'--chunk-overlap'")
    check(["index", "add", str(paths / "doc.txt"), "--index-type", "tree", *data], 2, "UsageError", "'--index-type'")
    check(["index", "add", str(paths / "doc.txt"), "--data-dir", str(paths / "a-file")], 2, "UsageError", "'--data-dir'")
    message = check(["index", "add", str(paths / "doc.txt"), "--chunk-size", "32", "--chunk-overlap", "40", *data], 1,
                    "ConfigError")
    assert "--chunk-overlap (40) must be smaller than --chunk-size (32)" in message
    check(["index", "list", "--data-dir", str(paths / "a-file")], 2, "UsageError", "'--data-dir'")
    check(["index", "remove", "nope", *data], 1, "DocumentNotFoundError", "'nope'")
    check(["index", "stats", "--data-dir", str(paths / "a-file")], 2, "UsageError", "'--data-dir'")
    check(["index", "stats", "--config", str(paths / "bad.yaml")], 1, "ConfigError")
    check(["index", "search", "  ", *data], 1, "InvalidPromptError", "QUERY is empty")
    check(["index", "search", "q \udcff", *data], 1, "InvalidPromptError", "cannot be encoded")
    check(["index", "search", "q", "--top-k", "0", *data], 2, "UsageError", "'--top-k'")
    check(["index", "search", "q", "--min-score", "2", *data], 2, "UsageError", "'--min-score'")
    assert not (paths / "index").exists()


# -- router ---------------------------------------------------------------------------------------

def test_router_subcommands(paths):
    check(["router", "list", "extra"], 2, "UsageError")
    check(["router", "fit", "--router", "nosuch", *store(paths)], 1, "ConfigError", "--router 'nosuch'")
    check(["router", "fit", "--data", str(paths / "bad.jsonl"), *store(paths)], 1, "TrainingDataError", "line 2")
    check(["router", "fit", "--data", str(paths / "missing.jsonl"), *store(paths)], 2, "UsageError", "'--data'")
    check(["router", "eval", *store(paths)], 2, "UsageError", "--data")
    check(["router", "eval", "--data", str(paths / "bad.jsonl"), *store(paths)], 1, "TrainingDataError", "line 2")
    check(["router", "eval", "--data", str(paths / "good.jsonl"), "--router", "nosuch", *store(paths)], 1, "ConfigError")


# -- the group, global flags, internal errors, interrupts ------------------------------------------

def test_group_usage_errors():
    check(["--bogus"], 2, "UsageError", "--bogus")
    check(["nosuchcommand"], 2, "UsageError", "nosuchcommand")
    check(["--verbose", "--quiet", "list"], 2, "UsageError", "cannot be used together")


def test_os_errors_from_user_paths(paths, monkeypatch):
    monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(paths / "a-file"))
    check(["unload", "--all", "--adapters-dir", str(paths / "adapters")], 1, None, str(paths / "a-file"))


def test_internal_errors_are_one_line_and_verbose_shows_the_traceback(paths, monkeypatch):
    from adaptrix_core.cli import adapters as cli_adapters

    def broken(config):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli_adapters, "active_adapters_for", broken)
    message = check(["active"], 1, "ZeroDivisionError")
    assert message == "internal error (ZeroDivisionError: boom); run with --verbose for the traceback"
    verbose = invoke("--verbose", "active")
    assert verbose.exit_code == 1
    assert "Traceback (most recent call last)" in verbose.stderr and "ZeroDivisionError: boom" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == "Error: internal error (ZeroDivisionError: boom)"


def test_keyboard_interrupt_exits_130(paths, monkeypatch):
    from adaptrix_core.cli import adapters as cli_adapters

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_adapters, "active_adapters_for", interrupted)
    result = invoke("active")
    assert_one_error(result, [], 130, text="Interrupted")
    as_json = invoke("active", "--json")
    assert as_json.exit_code == 130 and json.loads(as_json.stdout)["error"]["type"] == "KeyboardInterrupt"


def test_verbose_shows_library_logging_and_quiet_hides_extras(paths, tiny_model_dir, single_torch_thread):
    common = [*store(paths, str(tiny_model_dir("llama"))), "--max-new-tokens", "3", "--temperature", "0"]
    normal = invoke("query", "hello", *common)
    assert normal.exit_code == 0 and "INFO" not in normal.stderr
    answer, footer = normal.stdout.splitlines()[:2]
    assert "tokens" in footer
    quiet = invoke("--quiet", "query", "hello", *common)
    assert quiet.exit_code == 0 and quiet.stdout.splitlines() == [answer]
    verbose = invoke("--verbose", "query", "hello", *common)
    assert verbose.exit_code == 0 and verbose.stdout.splitlines()[0] == answer
    assert "INFO adaptrix_core.cli: model" in verbose.stderr and "INFO transformers" in verbose.stderr
    after = invoke("query", "hello", *common)  # the logging set-up does not outlive the invocation
    assert after.exit_code == 0 and "INFO" not in after.stderr


def test_quiet_hides_progress_bars(paths, tiny_model_dir, single_torch_thread):
    common = store(paths, str(tiny_model_dir("llama")))
    data = ["--data", str(paths / "good.jsonl"), "--epochs", "1", "--eval-split", "0", *common]
    shown = invoke("train", "--name", "shown", *data)
    assert shown.exit_code == 0 and "training shown" in shown.output
    hidden = invoke("-q", "train", "--name", "hidden", *data)
    assert hidden.exit_code == 0 and "training hidden" not in hidden.output and hidden.stderr == ""
    assert "saved adapter hidden" in hidden.stdout


# -- a real process: real stderr, no wrapping, signals ------------------------------------------------

def run_cli(*args: str, env_extra: dict[str, str] | None = None, **kwargs):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "40",
           "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "adaptrix_core.cli", *args], capture_output=True, env=env,
                          timeout=120, **kwargs)


def test_real_process_prints_one_unwrapped_line(paths):
    env = {"ADAPTRIX_CACHE_DIR": str(paths / "cache")}
    undecodable = os.fsdecode(b"hello \xff")  # argv bytes that are not UTF-8 become a lone surrogate
    for args, code in ((["query", undecodable, "--model", NO_MODEL], 1),
                       (["train", "--name", "taken", "--data", str(paths / "good.jsonl"), *store(paths)], 1),
                       (["query", "hello", "--top-p", "2", "--json"], 2),
                       (["load", "nope", *store(paths), "--json"], 1)):
        result = run_cli(*args, env_extra=env)
        stderr = result.stderr.decode()
        assert result.returncode == code, (args, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and len(lines[0]) > 40, (args, stderr)
        assert "Traceback" not in stderr
        if "--json" in args:
            assert json.loads(result.stdout)["error"]["message"] == lines[0][len("Error: "):]
        else:
            assert result.stdout == b""


def test_real_process_interrupted_at_a_prompt_exits_130(paths):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ADAPTRIX_CACHE_DIR": str(paths / "cache")}
    # Ctrl-C as in a terminal: a test run started in the background (nohup, `&`) hands its children an
    # ignored SIGINT, and Python installs no KeyboardInterrupt handler for an ignored signal.
    process = subprocess.Popen([sys.executable, "-m", "adaptrix_core.cli", "adapters", "delete", "taken",
                                "--adapters-dir", str(paths / "adapters")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        shown = b""
        deadline = time.monotonic() + 60
        while b"[y/N]" not in shown and time.monotonic() < deadline:
            shown += os.read(process.stdout.fileno(), 100)
        assert b"[y/N]" in shown
        # A SIGINT that lands after click printed the prompt but before Python blocks in read() is only
        # noticed at the next signal (a CPython race, wide on a loaded machine): press Ctrl-C again, as a
        # person would. stdin stays open: closing it (communicate) could make the read end with EOF first.
        for _ in range(30):
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=2)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.poll() is None:
            process.kill()
        stderr = process.stderr.read()
    finally:
        process.kill()
    assert process.returncode == 130, stderr.decode()[-2000:]
    assert [line for line in stderr.decode().splitlines() if line.strip()] == ["Error: Interrupted"]
    assert (paths / "adapters" / "taken").is_dir()
