"""The documentation's examples run as written.

Every ``python``, ``bash``/``sh`` and ``console`` block of README.md and docs/*.md runs in a scratch
folder holding copies of ``adapters/``, ``data/``, ``configs/`` and ``scripts/`` (see
``tests/doc_examples.py`` for the markers that say how a block runs). Blocks on the real default
model are marked ``slow``; ``tiny`` and ``no-model`` blocks run in the fast suite. After each example
(and once more at the end) the project's own adapter store, data and configs are checked to be
byte-identical to what they were before the first one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from doc_examples import (
    REPO,
    MarkerError,
    collect_examples,
    console_commands,
    prepare_workdir,
    read_blocks,
    run_example,
    tree_digest,
)

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLES = collect_examples(DOC_FILES)
#: Project folders the examples must leave byte-identical (they work on copies).
GUARDED = ("adapters", "data", "configs")
#: Folders an example would create if it wrote into the project instead of its scratch folder.
STRAYS = ("rag_index", "out", "my_dates.jsonl", "my_dates_test.jsonl")


def _param(example):
    marks = []
    if example.skip:
        marks.append(pytest.mark.skip(reason=example.skip))
    if example.tier == "default":
        marks.append(pytest.mark.slow)
    return pytest.param(example, id=example.id, marks=marks)


@pytest.fixture(scope="session")
def project_before() -> dict[str, str]:
    """Digests of the guarded project folders, taken before the first example runs."""
    return _project_digests()


@pytest.mark.parametrize("example", [_param(e) for e in EXAMPLES])
def test_doc_example(example, tmp_path: Path, tiny_model_dir, project_before) -> None:
    tiny = tiny_model_dir("llama") if example.tier == "tiny" else None
    folder = prepare_workdir(tmp_path / "work")
    result = run_example(example, folder, tiny)
    output = result.stdout
    assert result.returncode == 0, f"{example.id} exited with {result.returncode}:\n{output[-6000:]}"
    for text in example.expect:
        assert text in output, f"{example.id}: {text!r} not in the output:\n{output[-6000:]}"
    # An example that makes adapters removes them again: the store ends with the files it started with.
    assert _files(folder / "adapters") == _files(REPO / "adapters"), f"{example.id} left files in the store"
    assert _project_digests() == project_before, f"{example.id} changed the project's own files"
    assert not _strays(), f"{example.id} wrote into the project: {_strays()}"


def _project_digests() -> dict[str, str]:
    return {name: tree_digest(REPO / name) for name in GUARDED}


def _strays() -> list[str]:
    return [name for name in STRAYS if (REPO / name).exists()]


def _files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*")}


def test_every_doc_file_has_examples_and_markers_parse() -> None:
    # Collecting the examples above already parsed every marker; here: nothing was silently dropped.
    runnable = {example.path for example in EXAMPLES}
    for path in DOC_FILES:
        blocks = read_blocks(path)
        languages = {block.language for block in blocks}
        if languages & {"python", "bash", "sh", "console"}:
            assert path in runnable, path
    skipped = [example for example in EXAMPLES if example.skip]
    assert all(len(example.skip) > 15 for example in skipped), "every skip says why"
    assert len(skipped) <= len(EXAMPLES) // 3, f"too many skipped examples: {[e.id for e in skipped]}"


def test_bad_markers_are_refused(tmp_path: Path) -> None:
    doc = tmp_path / "bad.md"
    doc.write_text("<!-- doctest: skipp -->\n```python\nprint(1)\n```\n", encoding="utf-8")
    with pytest.raises(MarkerError, match="skipp"):
        collect_examples([doc])
    doc.write_text("<!-- doctest: continued -->\n```bash\necho 1\n```\n", encoding="utf-8")
    with pytest.raises(MarkerError, match="continued"):
        collect_examples([doc])
    doc.write_text("```python\nx = 1\n```\n\n<!-- doctest: continued; expect: 2 -->\n```python\nprint(x + 1)\n```\n",
                   encoding="utf-8")
    (joined,) = collect_examples([doc])
    assert joined.code == "x = 1\n\nprint(x + 1)\n" and joined.expect == ["2"] and joined.tier == "default"
    for marker in ("skip:", "tiny; no-model", "expect:"):
        doc.write_text(f"<!-- doctest: {marker} -->\n```bash\necho 1\n```\n", encoding="utf-8")
        with pytest.raises(MarkerError):
            collect_examples([doc])
    doc.write_text("<!-- doctest: tiny -->\n```toml\na = 1\n```\n", encoding="utf-8")
    with pytest.raises(MarkerError, match="never runs"):
        collect_examples([doc])
    doc.write_text("<!-- doctest: tiny; skip: needs a GPU; and a network -->\n```sh\nnvidia-smi\n```\n",
                   encoding="utf-8")
    (skipped,) = collect_examples([doc])
    assert skipped.skip == "needs a GPU; and a network" and skipped.tier == "tiny" and skipped.kind == "shell"


def test_console_blocks_run_their_commands_only() -> None:
    transcript = "$ adaptrix list --json\n[]\n$ echo one \\\n> two\none two\n"
    assert console_commands(transcript) == "adaptrix list --json\necho one \\\ntwo\n"


def test_examples_left_the_project_untouched(project_before) -> None:
    # Each example checks this right after it ran; this runs after the last one (pytest keeps file order).
    assert _project_digests() == project_before
    assert not _strays(), f"an example wrote into the project: {_strays()}"
