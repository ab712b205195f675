"""Property-based tests (hypothesis) of the document API: random inputs get a result or a typed error.

``add_documents`` gets random texts, random bytes written to files of every supported suffix (and
some unsupported ones), odd paths and odd objects, alone or in lists; ``retrieve`` gets random
queries, ``top_k`` and ``min_score``. The properties: only ``adaptrix_core.errors`` exceptions
escape; when an add raises or commits nothing the index files are byte-for-byte unchanged; and the
engine keeps serving afterwards (stats, listing and retrieval agree). The working folder and HOME
are an empty sandbox, so an odd path such as ``..`` or ``~`` cannot reach the real file system.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_rag import snapshot

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.errors import AdaptrixError
from adaptrix_core.rag.service import IngestReport

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SUFFIXES = [".txt", ".md", ".markdown", ".pdf", ".html", ".htm", ".TXT", ".docx", ""]
ODD_PATHS = ["", ".", "..", "/", "~", " ", "\x00", "a\x00b.txt", "missing.md", "no such file.txt", "x" * 300 + ".txt",
             "/dev/null", "~/nothing.md", "sub/../missing.pdf", "\ud800.txt", "\udcff.md"]
CONTENT = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=400).map(lambda data: b"%PDF-1.4\n" + data),
    st.text(max_size=200).map(lambda text: f"<html><title>t</title><p>{text}</p><script>x</script>".encode(
        "utf-8", "surrogatepass")),
)
ITEM = st.one_of(
    st.tuples(st.just("file"), st.integers(0, 3)),
    st.tuples(st.just("folder"), st.none()),
    st.tuples(st.just("text"), st.text(max_size=150)),
    st.tuples(st.just("odd"), st.sampled_from(ODD_PATHS)),
    st.tuples(st.just("object"), st.sampled_from([None, 0, 3.5, b"x.txt", True, ("a",), {"k": "v"}])),
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # the embedder on 2 shared cores: 1 thread is fastest


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` three times in four, ``invalid`` otherwise (one_of would weigh each branch alike)."""
    return st.integers(0, 3).flatmap(lambda n: invalid if n == 0 else valid)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, single_torch_thread) -> ModularAdaptrixEngine:
    engine = ModularAdaptrixEngine(device="cpu", config={"rag": {"data_dir": str(tmp_path_factory.mktemp("fuzz") / "index")}})
    assert engine.add_documents("Lighthouse keepers log the weather at dawn and dusk.").added
    return engine


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """An empty working folder (and HOME) for the odd relative paths."""
    (tmp_path / "home" / "cwd").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "home" / "cwd")
    return tmp_path


def materialise(folder: Path, files, item, as_path: bool):
    kind, value = item
    if kind == "file":
        name = folder / (f"f{value}{files[value][0]}" if value < len(files) else "absent.txt")
        return name if as_path else str(name)
    if kind == "folder":
        return folder if as_path else str(folder)
    if kind == "odd":
        return Path(value) if as_path and "\x00" not in value else value
    return value


def still_serving(engine: ModularAdaptrixEngine) -> None:
    stats, documents = engine.index_stats(), engine.list_documents()
    assert stats["documents"] == len(documents) >= 1
    assert stats["chunks"] == sum(d["chunks"] for d in documents)
    assert engine.retrieve("lighthouse weather", top_k=50, min_score=-1)


@SETTINGS
@given(files=st.lists(st.tuples(st.sampled_from(SUFFIXES), CONTENT), max_size=4),
       items=st.one_of(ITEM, st.lists(ITEM, max_size=4)), as_path=st.booleans())
def test_add_documents_gives_a_report_or_a_typed_error_and_keeps_the_index(engine, sandbox, files, items, as_path):
    index = Path(engine.config.rag.data_dir)
    with tempfile.TemporaryDirectory(dir=sandbox) as scratch:
        folder = Path(scratch)
        for number, (suffix, content) in enumerate(files):
            (folder / f"f{number}{suffix}").write_bytes(content)
        argument = ([materialise(folder, files, item, as_path) for item in items] if isinstance(items, list)
                    else materialise(folder, files, items, as_path))
        before = snapshot(index)
        try:
            report = engine.add_documents(argument)
        except AdaptrixError as exc:
            event(f"refused: {type(exc).__name__}")
            assert snapshot(index) == before
        else:
            event(f"report: {'committed' if report.generation else 'nothing committed'}, "
                  f"{'some failed' if report.failed else 'none failed'}")
            assert isinstance(report, IngestReport)
            assert all(isinstance(source, str) and isinstance(reason, str) for source, reason in report.failed)
            if report.generation is None:
                assert snapshot(index) == before
            else:
                assert report.added or report.replaced
    still_serving(engine)


@SETTINGS
@given(query=mostly(st.one_of(st.text(min_size=1, max_size=200), st.text(alphabet="abcdefgh ?", min_size=1, max_size=40)),
                    st.one_of(st.just(""), st.none(), st.integers(), st.binary(max_size=8))),
       top_k=mostly(st.one_of(st.none(), st.integers(1, 60)),
                    st.one_of(st.integers(-3, 0), st.integers(10 ** 6, 10 ** 12), st.floats(), st.booleans(),
                              st.text(max_size=2))),
       min_score=mostly(st.one_of(st.none(), st.floats(-1.5, 1.5)),
                        st.one_of(st.floats(), st.integers(-3, 3), st.booleans(), st.text(max_size=2))))
def test_retrieve_gives_ranked_passages_or_a_typed_error(engine, query, top_k, min_score):
    before = snapshot(Path(engine.config.rag.data_dir))
    try:
        hits = engine.retrieve(query, top_k=top_k, min_score=min_score)
    except AdaptrixError as exc:
        event(f"refused: {type(exc).__name__}")
        hits = None
    if hits is not None:
        limit = engine.config.rag.top_k if top_k is None else top_k
        floor = engine.config.rag.min_score if min_score is None else min_score
        scores = [hit["score"] for hit in hits]
        assert len(hits) <= limit and scores == sorted(scores, reverse=True) and all(s >= floor for s in scores)
        messages, sources = engine.documents.rag_messages(query, top_k, min_score)
        assert messages[-1]["role"] == "user" and {s["chunk"] for s in sources} <= {h["chunk"] for h in hits}
    assert snapshot(Path(engine.config.rag.data_dir)) == before
    still_serving(engine)
