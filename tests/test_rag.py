"""RAG: readers, chunking, the atomic SQLite + FAISS index, retrieval, prompts, the ``index`` CLI.

Everything except the ``slow`` test runs without the language model: the engine is created but
never loads it, and the real (small) embedding model embeds the documents. Store-level tests use
random vectors, and the crash tests run the store in a subprocess that imports neither torch nor
the embedder.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.errors import ConfigError, DocumentError, DocumentNotFoundError, IndexCorruptError
from adaptrix_core.rag import store as store_module
from adaptrix_core.rag import vectors as vec
from adaptrix_core.rag.chunking import Chunk, chunk_document
from adaptrix_core.rag.readers import Document, from_text, read_file
from adaptrix_core.rag.store import Addition, IndexStore

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "rag" / "corpus"


def make_engine(data_dir: Path, **rag) -> ModularAdaptrixEngine:
    return ModularAdaptrixEngine(device="cpu", config={"rag": {"data_dir": str(data_dir), **rag}})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def corpus_engine(tmp_path_factory):
    """An engine whose index holds the Quorvale handbook (built once for the read-only tests)."""
    engine = make_engine(tmp_path_factory.mktemp("corpus-index"))
    report = engine.add_documents(CORPUS)
    assert report.failed == [] and len(report.added) == 7
    return engine


# -- readers and formats ---------------------------------------------------------------------------
def test_every_format_is_read_with_pages_and_without_html_scripts(corpus_engine):
    kinds = {Path(d["source"]).name: d["kind"] for d in corpus_engine.list_documents()}
    assert sorted(set(kinds.values())) == ["html", "markdown", "pdf", "text"]
    html = read_file(CORPUS / "03_it_and_security.html")
    assert "Lanternway" in html.text and "IT and security rules" in html.text
    assert "tracking code" not in html.text and "must not be indexed" not in html.text and "font-family" not in html.text
    pdf = read_file(CORPUS / "04_travel_and_expenses.pdf")
    assert [page for page, _, _ in pdf.pages] == [1, 2, 3]
    assert "0.38 euros per kilometre" in pdf.text[pdf.pages[1][1]:pdf.pages[1][2]]
    hit = corpus_engine.retrieve("mileage rate for driving your own car", top_k=1)[0]
    assert hit["source"].endswith("04_travel_and_expenses.pdf") and hit["page"] == 2 and "0.38" in hit["text"]


def test_bad_files_are_reported_and_the_others_ingested(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("The Orbis ferry leaves at half past seven every morning.")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "picture.png").write_bytes(b"\x89PNG\r\n")
    (docs / "empty.md").write_text("   \n")
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    engine = make_engine(tmp_path / "index")
    report = engine.add_documents([docs, tmp_path / "notes.docx", str(tmp_path / "missing.md")])
    assert [report.sources[i] for i in report.added] == [str((docs / "good.txt").resolve())]
    failed = dict(report.failed)
    assert "not UTF-8" in failed[str(docs / "latin1.txt")]
    assert "not a readable PDF" in failed[str(docs / "broken.pdf")]
    assert "no extractable text" in failed[str(docs / "empty.md")]
    assert "unsupported format '.docx'" in failed[str(tmp_path / "notes.docx")]
    assert "does not exist" in failed[str(tmp_path / "missing.md")]
    assert report.skipped == [str(docs / "picture.png")]
    assert len(engine.list_documents()) == 1
    with pytest.raises(DocumentError, match="unsupported format"):
        read_file(tmp_path / "notes.docx")


def test_plain_strings_become_text_documents_with_stable_ids(tmp_path):
    engine = make_engine(tmp_path / "index")
    text = "Saffron moths migrate to the Pellmore cliffs every October."
    report = engine.add_documents(text)
    assert report.added == [from_text(text).doc_id] and report.sources[report.added[0]].startswith("text:")
    assert engine.add_documents([text]).unchanged == report.added
    hit = engine.retrieve("Where do saffron moths migrate?")[0]
    assert hit["document"] == report.added[0] and hit["page"] is None and hit["text"] == text


# -- chunking ----------------------------------------------------------------------------------------
def test_chunks_respect_size_overlap_and_offsets(corpus_engine):
    tokenizer = corpus_engine.embedder.model.tokenizer
    words = " ".join(f"word{n} fact{n % 7}." for n in range(400))
    document = from_text(words)
    chunks = chunk_document(document, tokenizer, size=50, overlap=10)
    token_offsets = [o for o in tokenizer(words, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    assert len(chunks) == 1 + -(-(len(token_offsets) - 50) // 40)
    for number, chunk in enumerate(chunks):
        assert chunk.text == document.text[chunk.start:chunk.end]
        assert chunk.start == token_offsets[number * 40][0]
        assert chunk.tokens == min(50, len(token_offsets) - number * 40)
        if number:
            shared = chunks[number - 1].end - chunk.start
            assert shared == token_offsets[number * 40 + 9][1] - token_offsets[number * 40][0]  # 10 tokens
    assert chunks[0].start == 0 and chunks[-1].end == len(words)
    with pytest.raises(ConfigError):
        chunk_document(document, tokenizer, size=10, overlap=10)
    with pytest.raises(ConfigError, match="chunk_overlap"):
        make_engine(Path("unused"), chunk_size=32, chunk_overlap=32)


def test_pdf_chunks_never_cross_pages(corpus_engine):
    document = read_file(CORPUS / "04_travel_and_expenses.pdf")
    chunks = chunk_document(document, corpus_engine.embedder.model.tokenizer, size=40, overlap=8)
    for chunk in chunks:
        _, start, end = document.pages[chunk.page - 1]
        assert start <= chunk.start < chunk.end <= end
    assert {c.page for c in chunks} == {1, 2, 3}


# -- updates -----------------------------------------------------------------------------------------
def test_unchanged_readd_is_a_noop_and_a_changed_file_replaces_its_chunks(tmp_path):
    doc = tmp_path / "policy.md"
    doc.write_text("# Policy\nVisitors sign in at the blue kiosk in the lobby.\n")
    engine = make_engine(tmp_path / "index")
    first = engine.add_documents(doc)
    files = snapshot(tmp_path / "index")
    again = engine.add_documents([doc])
    assert again.unchanged == first.added and again.generation is None and snapshot(tmp_path / "index") == files
    doc.write_text("# Policy\nVisitors sign in at the green kiosk next to the lifts.\n")
    changed = engine.add_documents(doc)
    assert changed.replaced == first.added and changed.added == [] and changed.generation == first.generation + 1
    texts = [h["text"] for h in engine.retrieve("Where do visitors sign in?", top_k=5, min_score=-1)]
    assert len(texts) == 1 and "green kiosk" in texts[0]
    rechunked = make_engine(tmp_path / "index", chunk_size=64, chunk_overlap=8).add_documents(doc)
    assert rechunked.replaced == first.added  # other chunking settings re-cut the same text


def test_remove_by_id_and_by_path(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Penguins at the Rockhopper station are counted every Sunday.")
    b.write_text("The Rockhopper station generator runs on biodiesel.")
    engine = make_engine(tmp_path / "index")
    ids = engine.add_documents([a, b]).added
    removed = engine.remove_document(ids[0])
    assert removed["source"] == str(a.resolve())
    assert [d["id"] for d in engine.list_documents()] == [ids[1]]
    assert all(h["document"] == ids[1] for h in engine.retrieve("penguins counted", min_score=-1))
    engine.remove_document(str(b))
    assert engine.list_documents() == [] and engine.retrieve("penguins", min_score=-1) == []
    assert engine.index_stats()["chunks"] == 0
    with pytest.raises(DocumentNotFoundError, match="nope"):
        engine.remove_document("nope")


# -- retrieval and prompts ------------------------------------------------------------------------
def test_retrieve_ranks_the_answer_first_and_applies_top_k_and_min_score(corpus_engine):
    hits = corpus_engine.retrieve("What is the name of the company VPN?", top_k=4, min_score=-1)
    assert len(hits) == 4 and hits[0]["source"].endswith("03_it_and_security.html") and "Lanternway" in hits[0]["text"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(hits[0]) >= {"document", "source", "chunk", "page", "start", "end", "score", "text"}
    assert corpus_engine.retrieve("What is the name of the company VPN?", top_k=2, min_score=-1) == hits[:2]
    assert corpus_engine.retrieve("What is the name of the company VPN?", min_score=0.99) == []


def test_rag_messages_number_the_passages_and_return_sources(corpus_engine):
    messages, sources = corpus_engine.documents.rag_messages("In which app are parking spaces booked?", 3, None)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.startswith("Passages:\n[1] ") and "Berth app" in content
    assert "cite" in content.lower() and content.endswith("Question: In which app are parking spaces booked?")
    assert [s["citation"] for s in sources] == list(range(1, len(sources) + 1))
    assert all(s["excerpt"] and s["excerpt"] in content for s in sources)
    assert "Berth" in sources[0]["excerpt"] and "Berth" in sources[0]["text"]
    whole = make_engine(Path(corpus_engine.config.rag.data_dir), prompt_sentences=None)
    messages, sources = whole.documents.rag_messages("In which app are parking spaces booked?", 3, None)
    content = messages[0]["content"]
    assert [s["citation"] for s in sources] == [1, 2, 3]
    assert content.index("[1] ") < content.index("[2] ") < content.index("[3] ")
    assert all(" ".join(s["text"].split()) in content for s in sources)
    bare, none = corpus_engine.documents.rag_messages("In which app are parking spaces booked?", 3, 0.999)
    assert bare == [{"role": "user", "content": "In which app are parking spaces booked?"}] and none == []


def test_prompt_excerpts_are_whole_sentences_across_chunk_boundaries(tmp_path):
    engine = make_engine(tmp_path / "index", chunk_size=16, chunk_overlap=2, prompt_sentences=1)
    fact = "The Orbis ferry to the outer islands leaves from pier nine at half past seven every weekday morning."
    engine.add_documents("Welcome aboard.\nTickets are sold\non the quay. " + fact + " Bicycles travel free of charge.")
    assert all(len(h["text"]) < len(fact) for h in engine.retrieve("ferry", top_k=10, min_score=-1))
    messages, sources = engine.documents.rag_messages("When does the Orbis ferry leave from pier nine?", 4, None)
    assert [s["excerpt"] for s in sources] == [fact] and f"[1] {fact}" in messages[0]["content"]


def test_index_survives_an_engine_restart(tmp_path, corpus_engine):
    engine = make_engine(tmp_path / "index")
    engine.add_documents([CORPUS / "05_office_and_facilities.md", CORPUS / "07_benefits.html"])
    before = (engine.list_documents(), engine.retrieve("gym subsidy"), engine.index_stats())
    restarted = make_engine(tmp_path / "index")
    assert (restarted.list_documents(), restarted.retrieve("gym subsidy"), restarted.index_stats()) == before


# -- atomicity and corruption -----------------------------------------------------------------------
def synthetic_addition(name: str, chunks: int, seed: int, dimension: int = 8) -> Addition:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(chunks, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text = " ".join(f"{name}-{n}" for n in range(chunks))
    document = Document(name, f"text:{name}", "text", text, ((None, 0, len(text)),))
    parts = [Chunk(n, None, 0, len(text), f"{name} chunk {n}", 1) for n in range(chunks)]
    return Addition(document, parts, vectors, "test")


def test_failure_between_vector_write_and_commit_keeps_the_last_state(tmp_path, monkeypatch):
    store = IndexStore(tmp_path)
    store.apply([synthetic_addition("first", 3, 0)], [], "m", 8)
    committed = snapshot(tmp_path)

    real_write = store_module._write_vectors

    def write_then_fail(path, data):
        real_write(path, data)
        raise OSError("disk vanished")

    monkeypatch.setattr(store_module, "_write_vectors", write_then_fail)
    with pytest.raises(OSError, match="disk vanished"):
        store.apply([synthetic_addition("second", 4, 1)], ["first"], "m", 8)
    monkeypatch.undo()
    assert snapshot(tmp_path)["chunks.sqlite"] == committed["chunks.sqlite"]
    for reader in (store, IndexStore(tmp_path)):
        assert [d["id"] for d in reader.documents()] == ["first"] and reader.stats()["generation"] == 1
        assert {h["document"] for h in reader.search(np.ones(8, dtype=np.float32) / 8 ** 0.5, 10)} == {"first"}
    IndexStore(tmp_path).apply([synthetic_addition("second", 4, 1)], [], "m", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.sqlite", "vectors.2.faiss"]


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_rag import synthetic_addition
    from adaptrix_core.rag import store as store_module
    from adaptrix_core.rag.store import IndexStore

    store = IndexStore({folder!r})
    mode = sys.argv[1]
    if mode == "loop":
        for n in range(100000):
            store.apply([synthetic_addition(f"doc{{n}}", 1 + n % 5, n)], [f"doc{{n - 3}}"] if n >= 3 else [], "m", 8)
            print(n, flush=True)
    store.apply([synthetic_addition("first", 3, 0)], [], "m", 8)
    real = store_module._write_vectors
    if mode == "before-commit":
        def crash(path, data):
            real(path, data)
            os._exit(3)  # killed after the new vector file is in place, before the SQLite commit
        store_module._write_vectors = crash
    else:
        store_module.IndexStore._remove_stale = lambda self, conn: os._exit(3)  # killed right after the commit
    store.apply([synthetic_addition("second", 4, 1)], ["first"], "m", 8)
""")


def run_crash(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(tmp_path / "index"))
    return subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode, survivor", [("before-commit", "first"), ("after-commit", "second")])
def test_a_process_killed_mid_commit_leaves_a_complete_state(tmp_path, mode, survivor):
    result = run_crash(tmp_path, mode)
    assert result.returncode == 3, result.stderr
    store = IndexStore(tmp_path / "index")
    assert [d["id"] for d in store.documents()] == [survivor]
    assert len(store.search(np.ones(8, dtype=np.float32), 10)) == {"first": 3, "second": 4}[survivor]
    store.apply([synthetic_addition("third", 2, 2)], [], "m", 8)
    assert store.stats()["chunks"] == {"first": 5, "second": 6}[survivor]
    assert len(list((tmp_path / "index").glob("vectors.*"))) == 1


def test_sigkill_at_a_random_moment_of_repeated_commits(tmp_path):
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(tmp_path / "index"))
    process = subprocess.Popen([sys.executable, "-c", script, "loop"], stdout=subprocess.PIPE, text=True)
    try:
        committed = -1
        while committed < 15:
            committed = int(process.stdout.readline())
        time.sleep(0.037)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    store = IndexStore(tmp_path / "index")
    stats = store.stats()
    assert stats["generation"] >= committed + 1
    documents = store.documents()
    newest = stats["generation"] - 1
    assert [d["id"] for d in documents] == [f"doc{n}" for n in range(max(0, newest - 2), newest + 1)]
    assert stats["chunks"] == sum(d["chunks"] for d in documents) == sum(1 + n % 5 for n in range(max(0, newest - 2), newest + 1))


def test_damaged_files_raise_index_corrupt_error_and_stay_untouched(tmp_path):
    engine = make_engine(tmp_path / "index")
    engine.add_documents("A harmless sentence about lighthouses.")
    folder = tmp_path / "index"
    vectors = next(folder.glob("vectors.*.faiss"))
    data = bytearray(vectors.read_bytes())
    data[-20] ^= 0xFF
    vectors.write_bytes(bytes(data))
    damaged = snapshot(folder)
    fresh = make_engine(folder)
    for action in (fresh.list_documents, fresh.index_stats, lambda: fresh.retrieve("lighthouses"),
                   lambda: fresh.add_documents("Another sentence."), lambda: fresh.remove_document("x")):
        with pytest.raises(IndexCorruptError, match="checksum"):
            action()
    assert snapshot(folder) == damaged
    vectors.unlink()
    with pytest.raises(IndexCorruptError, match="cannot be read"):
        make_engine(folder).retrieve("lighthouses")
    (folder / "chunks.sqlite").write_bytes(b"definitely not sqlite" * 100)
    garbage = snapshot(folder)
    with pytest.raises(IndexCorruptError, match="not a readable SQLite"):
        make_engine(folder).add_documents("Another sentence.")
    assert snapshot(folder) == garbage


def test_embedding_model_mismatch_is_a_config_error(tmp_path):
    store = IndexStore(tmp_path)
    store.apply([synthetic_addition("a", 2, 0)], [], "model-a", 8)
    with pytest.raises(ConfigError, match="model-a"):
        store.apply([synthetic_addition("b", 2, 1)], [], "model-b", 8)
    with pytest.raises(ConfigError, match="8 dimensions"):
        store.apply([synthetic_addition("b", 2, 1, dimension=16)], [], "model-a", 16)


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_hnsw_and_ivf_layouts_add_remove_and_search(tmp_path, monkeypatch, index_type):
    monkeypatch.setattr(vec, "IVF_MIN_VECTORS", 200)
    store = IndexStore(tmp_path, index_type=index_type, nprobe=1000, ef_search=200)
    store.apply([synthetic_addition("small", 100, 0)], [], "m", 8)
    assert store.stats()["layout"] == ("flat" if index_type == "ivf" else "hnsw")
    store.apply([synthetic_addition("big", 300, 1)], [], "m", 8)
    layout = store.stats()["layout"]
    assert layout == ("ivf80" if index_type == "ivf" else "hnsw")  # IVF trained on 400 vectors: 4 * sqrt(400) lists
    query = synthetic_addition("big", 300, 1).vectors[5]
    assert store.search(query, 1)[0]["text"] == "big chunk 5"
    store.apply([], ["small"], "m", 8)
    reopened = IndexStore(tmp_path, index_type=index_type, nprobe=1000, ef_search=200)
    assert reopened.stats()["chunks"] == 300 and reopened.stats()["layout"] == layout
    assert {h["document"] for h in reopened.search(query, 20)} == {"big"}


# -- command line ------------------------------------------------------------------------------------
def test_index_cli_commands_with_json(tmp_path):
    from click.testing import CliRunner

    from adaptrix_core.cli import cli

    runner = CliRunner()
    where = ["--data-dir", str(tmp_path / "index"), "--json"]
    (tmp_path / "bad.docx").write_bytes(b"x")
    added = runner.invoke(cli, ["index", "add", str(CORPUS / "07_benefits.html"), str(tmp_path / "bad.docx"), *where])
    assert added.exit_code == 1, added.output
    report = json.loads(added.stdout)
    assert len(report["added"]) == 1 and "unsupported format" in report["failed"][0][1]
    listed = json.loads(runner.invoke(cli, ["index", "list", *where]).stdout)["documents"]
    assert [d["id"] for d in listed] == report["added"] and listed[0]["kind"] == "html"
    stats = json.loads(runner.invoke(cli, ["index", "stats", *where]).stdout)
    assert stats["documents"] == 1 and stats["generation"] == 1 and stats["vectors_bytes"] > 0
    found = json.loads(runner.invoke(cli, ["index", "search", "bike lease scheme", "--top-k", "1", *where]).stdout)
    assert "Pedalshare" in found["sources"][0]["text"]
    removed = runner.invoke(cli, ["index", "remove", report["added"][0], *where])
    assert removed.exit_code == 0 and json.loads(removed.stdout)["removed"]["id"] == report["added"][0]
    missing = runner.invoke(cli, ["index", "remove", "no-such-id", *where])
    assert missing.exit_code == 1 and json.loads(missing.stdout)["error"]["type"] == "DocumentNotFoundError"
    table = runner.invoke(cli, ["index", "stats", "--data-dir", str(tmp_path / "index")])
    assert table.exit_code == 0 and "generation" in table.output


# -- with the real model -------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_answers_a_handbook_question_with_rag(default_engine, tmp_path):
    # The shared engine's document index, pointed at a folder of this test.
    default_engine.documents.settings = default_engine.config.rag.model_copy(update={"data_dir": str(tmp_path / "index")})
    default_engine.add_documents(CORPUS)
    question = "What is the mandatory safety course for new employees called?"
    result = default_engine.query(question, use_rag=True, top_k=4, temperature=0, max_new_tokens=48)
    assert "Deckhand 101" in result.text
    plain = default_engine.query(question, temperature=0, max_new_tokens=48)
    assert "Deckhand" not in plain.text and plain.sources == []
    # The passage that holds the fact is among the 4 retrieved (the recall@4 criterion of the issue).
    assert any(source["source"].endswith("06_onboarding_and_training.txt") for source in result.sources)


@pytest.mark.parametrize("k", [1, 5, 600])
def test_flat_search_ranks_like_faiss(k):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(500, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[:500] + 1
    index = vec.build("flat", 32, ids, vectors)
    vec.remove(index, "flat", ids[:7])
    query = vectors[42] + 0.1 * rng.normal(size=32).astype(np.float32)
    scores, found = vec.search(index, query, k)
    expected_scores, expected_ids = index.search(query.reshape(1, -1), min(k, index.ntotal))
    assert found == [int(i) for i in expected_ids[0]] and len(found) == min(k, 493)
    assert np.allclose(scores, expected_scores[0], atol=1e-5) and scores == sorted(scores, reverse=True)
    assert not set(found) & set(int(i) for i in ids[:7])


@pytest.mark.slow
def test_cli_query_rag_answers_from_the_index_in_data_dir(tmp_path):
    from click.testing import CliRunner

    from adaptrix_core.cli import cli

    runner, where = CliRunner(), ["--data-dir", str(tmp_path / "index")]
    assert runner.invoke(cli, ["index", "add", str(CORPUS / "06_onboarding_and_training.txt"), "--json", *where]).exit_code == 0
    result = runner.invoke(cli, ["query", "What is the mandatory safety course for new employees called?", "--rag",
                                 "--temperature", "0", "--max-new-tokens", "32", "--json", *where])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert "Deckhand 101" in answer["text"]
    assert answer["sources"][0]["citation"] == 1 and answer["sources"][0]["source"].endswith("06_onboarding_and_training.txt")
