"""Find the runnable examples of the documentation and run them in a scratch copy of the project.

``collect_examples(files)`` reads the fenced code blocks of Markdown files and groups them into
``Example`` units. Blocks fenced as ``python``, ``bash``, ``sh`` or ``console`` are examples; other
fences (``toml``, ``yaml``, plain ```` ``` ````) are not. The line right before a block's opening fence
(blank lines aside) may hold one marker that says how the block runs::

    <!-- doctest: tiny -->                       run against a tiny random model (the answer does not matter)
    <!-- doctest: no-model -->                   needs no language model at all (any model load fails)
    <!-- doctest: skip: REASON -->               not run here, for REASON (pip installs, minutes-long jobs);
                                                 the reason runs to the end of the marker
    <!-- doctest: continued -->                  Python that continues the previous Python block: one process
    <!-- doctest: tiny; expect: TEXT -->         directives combine with ";"; the output must contain TEXT

A block without a marker runs against the real default model (tests marked ``slow``).

``run_example`` runs one unit in a folder that holds copies of the project's ``adapters/``,
``data/``, ``configs/`` and ``scripts/`` and a ``.venv`` link to the running interpreter's
environment, so relative paths in the examples work and the project's own files are never touched.
Python runs as a script of the running interpreter, shell with ``bash -e -o pipefail``, offline,
with this checkout's code first on ``PYTHONPATH``, the interpreter's ``bin`` first on ``PATH`` (so
``adaptrix`` resolves), one torch thread, and an Adaptrix cache of its own that links the user's
``converted/`` models (the default model is not converted again, the CLI's state stays private).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Folders copied into each example's working directory.
COPIED = ("adapters", "data", "configs", "scripts")
LANGUAGES = {"python": "python", "bash": "shell", "sh": "shell", "console": "console"}
TIERS = ("default", "tiny", "no-model")

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->$")


class MarkerError(ValueError):
    """A ``<!-- doctest: ... -->`` marker that cannot be understood, named by file and line."""


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    directives: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Example:
    """What runs as one process: a shell block, or one Python block with the blocks that continue it."""

    path: Path
    line: int
    kind: str  # "python", "shell" or "console"
    tier: str  # "default", "tiny" or "no-model"
    code: str
    expect: list[str]
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


def parse_marker(text: str, where: str) -> dict[str, list[str]]:
    """``"tiny; expect: Paris"`` -> ``{"tiny": [], "expect": ["Paris"]}``; unknown directives raise."""
    directives: dict[str, list[str]] = {}
    parts = [piece.strip() for piece in text.split(";")]
    for index, part in enumerate(parts):
        if not part:
            continue
        name, _, value = part.partition(":")
        name, value = name.strip(), value.strip()
        if name == "skip":  # a reason may hold ";": it runs to the end of the marker
            value = "; ".join([value, *parts[index + 1:]]).strip("; ")
            if value:
                directives["skip"] = [value]
                break
        if name in ("tiny", "no-model", "continued") and not value:
            directives[name] = []
        elif name in ("skip", "expect") and value:
            directives.setdefault(name, []).append(value)
        else:
            raise MarkerError(f"{where}: cannot read doctest directive {part!r}; use tiny, no-model, continued, "
                              "'skip: REASON' or 'expect: TEXT'.")
    if len([tier for tier in ("tiny", "no-model") if tier in directives]) > 1:
        raise MarkerError(f"{where}: a block runs either 'tiny' or 'no-model', not both.")
    return directives


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with its language and the directives of the marker before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        previous = index - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        marker = _MARKER.match(lines[previous].strip()) if previous >= 0 else None
        where = f"{path.name}:{index + 1}"
        directives = parse_marker(marker.group(1), where) if marker else {}
        blocks.append(Block(path, index + 1, language, "\n".join(lines[index + 1:end]) + "\n", directives))
        index = end + 1
    return blocks


def collect_examples(files: list[Path]) -> list[Example]:
    """The runnable units of ``files``: Python blocks joined with the blocks marked ``continued``."""
    examples: list[Example] = []
    for path in files:
        last_python: Example | None = None
        for block in read_blocks(path):
            kind = LANGUAGES.get(block.language)
            where = f"{path.name}:{block.line}"
            if kind is None:
                if block.directives:
                    raise MarkerError(f"{where}: a doctest marker on a {block.language or 'plain'} block, which never runs.")
                continue
            skip = "; ".join(block.directives.get("skip", [])) or None
            tier = "tiny" if "tiny" in block.directives else "no-model" if "no-model" in block.directives else "default"
            if "continued" in block.directives:
                if kind != "python" or last_python is None:
                    raise MarkerError(f"{where}: only a Python block that follows another one can be 'continued'.")
                if "tiny" in block.directives or "no-model" in block.directives or skip:
                    raise MarkerError(f"{where}: a continued block runs as the block it continues; mark that one.")
                last_python.code += "\n" + block.code
                last_python.expect += block.directives.get("expect", [])
                continue
            example = Example(path, block.line, kind, tier, block.code, list(block.directives.get("expect", [])), skip)
            examples.append(example)
            last_python = example if kind == "python" else None
    return examples


def console_commands(code: str) -> str:
    """The commands of a console transcript: ``$ `` lines (with ``> `` continuations); output dropped."""
    commands: list[str] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
        elif line.startswith("> ") and commands:
            commands[-1] += "\n" + line[2:]
    return "\n".join(commands) + "\n"


def prepare_workdir(folder: Path) -> Path:
    """Copy the project's data folders into ``folder`` and link ``.venv`` to this interpreter's environment."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copytree(REPO / name, folder / name, symlinks=False)
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    return folder


def private_cache(folder: Path) -> Path:
    """An Adaptrix cache folder whose ``converted/`` is the user's: the default model is converted once, for all."""
    shared = Path(os.environ.get("ADAPTRIX_CACHE_DIR") or "~/.cache/adaptrix").expanduser() / "converted"
    shared.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "converted").exists():
        (folder / "converted").symlink_to(shared, target_is_directory=True)
    return folder


def example_environment(tier: str, tiny_model: Path | None, folder: Path) -> dict[str, str]:
    """The environment of an example: offline, no ADAPTRIX_* settings of the caller, this checkout's code first."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ADAPTRIX_")}
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    # One torch/FAISS thread unless the caller chose: on a busy 2-core machine (tests running beside
    # these) OpenMP's spin-waiting threads make every op several times slower; on an idle one the
    # examples, mostly start-up and short generations, lose little.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A cache of its own (the CLI remembers `adaptrix load` there) that shares the converted models.
    env["ADAPTRIX_CACHE_DIR"] = str(private_cache(folder.parent / "adaptrix-cache"))
    if tier == "tiny":
        if tiny_model is None:
            raise ValueError("A tiny example needs the tiny model's folder.")
        env["ADAPTRIX_MODEL__MODEL_ID"] = str(tiny_model)
    elif tier == "no-model":
        # A model folder that does not exist: an example that loads a model fails instead of loading the real one.
        env["ADAPTRIX_MODEL__MODEL_ID"] = str(folder / "no-model-is-loaded-here")
    return env


def run_example(example: Example, folder: Path, tiny_model: Path | None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``example`` in ``folder`` (prepared with ``prepare_workdir``); stdout and stderr are captured together."""
    env = example_environment(example.tier, tiny_model, folder)
    if example.kind == "python":
        script = folder / "example.py"
        script.write_text(example.code, encoding="utf-8")
        command = [sys.executable, script.name]
    else:
        script = folder / "example.sh"
        script.write_text(example.code if example.kind == "shell" else console_commands(example.code), encoding="utf-8")
        command = ["bash", "-e", "-o", "pipefail", script.name]
    # A session of its own, so that a timeout ends the commands the example started, not just bash.
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n[timed out after {timeout:.0f} s]"
    except BaseException:  # an interrupted test run leaves nothing running either
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, process.returncode, output)


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root`` (symbolic links by their target)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L {relative} -> {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {relative} {path.stat().st_size}\n".encode())
            digest.update(path.read_bytes())
        elif path.is_dir():
            digest.update(f"D {relative}\n".encode())
    return digest.hexdigest()
