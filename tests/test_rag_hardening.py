"""RAG hardening: refused inputs, no lock left by any read, damaged SQLite pages, link loops, failed writes.

Like tests/test_rag.py these run without the language model: the engines only embed (the real
all-MiniLM-L6-v2), and store-level tests use random vectors. A spy on ``sqlite3.connect`` keeps
every connection the store opens, so a connection left open (and the read lock it may hold) is seen
even where CPython's reference counting would have closed it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_rag import CORPUS, run_crash, snapshot, synthetic_addition

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.errors import (
    AdaptrixError,
    ConfigError,
    DocumentError,
    IndexAccessError,
    IndexCorruptError,
)
from adaptrix_core.rag import inputs as inputs_module
from adaptrix_core.rag import readers as readers_module
from adaptrix_core.rag import store as store_module
from adaptrix_core.rag import vectors as vec
from adaptrix_core.rag.store import IndexStore

REAL_CONNECT = sqlite3.connect
pytestmark = pytest.mark.usefixtures("single_torch_thread")  # the embedder on 2 shared cores: 1 thread is fastest


def make_engine(data_dir: Path, **rag) -> ModularAdaptrixEngine:
    return ModularAdaptrixEngine(device="cpu", config={"rag": {"data_dir": str(data_dir), **rag}})


def writer_gets_the_lock_at_once(folder: Path) -> bool:
    """Whether another connection can start a write transaction without waiting (timeout 0)."""
    if not (folder / "chunks.sqlite").is_file():
        return True
    conn = REAL_CONNECT(folder / "chunks.sqlite", timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.DatabaseError as exc:  # a damaged file may refuse the transaction; only a lock counts here
        return getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED")
    finally:
        conn.close()


def is_closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


@pytest.fixture
def opened(monkeypatch) -> list[sqlite3.Connection]:
    """Every SQLite connection opened while the test runs (kept alive, so a leak keeps its lock)."""
    connections: list[sqlite3.Connection] = []

    def tracking(*args, **kwargs):
        conn = REAL_CONNECT(*args, **kwargs)
        connections.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", tracking)
    return connections


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory, single_torch_thread) -> Path:
    """An index of the Quorvale handbook (7 documents, several SQLite pages), built once; tests copy it."""
    folder = tmp_path_factory.mktemp("hardening") / "corpus-index"
    report = make_engine(folder).add_documents(CORPUS)
    assert len(report.added) == 7 and report.failed == []
    return folder


def copy_of(folder: Path, tmp_path: Path, name: str = "index") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


# -- 1. inputs that name nothing are refused before anything is read ----------------------------------
BAD_INPUTS = {
    "None": None, "empty string": "", "blank string": "   \n\t", "empty list": [], "list of empty string": [""],
    "list of blank string": ["  "], "Path('')": Path(""), "Path('.')": Path("."), "list of Path('')": [Path("")],
    "bytes": b"notes.txt", "list of bytes": [b"notes.txt"], "number": 42, "list with None": ["A fine text.", None],
    "dict": {"text": "hello"}, "filesystem root": "/", "Path root": Path("/"), "lone surrogate": "text \ud800 here",
    "NUL in a path": Path("bad\x00name.txt"), "bool": True,
}


@pytest.mark.parametrize("value", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_unusable_inputs_raise_before_anything_is_read(value, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "private.txt").write_text("Never index the working folder by accident.")
    monkeypatch.chdir(tmp_path / "work")
    reads, walks = [], []
    monkeypatch.setattr(readers_module, "read_file", lambda path: reads.append(path))
    monkeypatch.setattr(inputs_module, "walk", lambda folder: walks.append(folder))
    engine = make_engine(tmp_path / "index")
    with pytest.raises(DocumentError) as raised:
        engine.add_documents(value)
    assert not isinstance(raised.value, (AttributeError, TypeError))
    assert reads == [] and walks == [] and not (tmp_path / "index").exists()


def test_empty_inputs_never_index_the_working_folder_through_the_cli(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from adaptrix_core.cli import cli

    (tmp_path / "private.txt").write_text("Never index the working folder by accident.")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["index", "add", "", "--data-dir", str(tmp_path / "index"), "--json"])
    # Refused as a usage error (the CLI checks paths exist) or by the library's input check.
    assert result.exit_code != 0 and ("DocumentError" in result.output or "Path '' does not exist" in result.output)
    assert not (tmp_path / "index").exists()


def test_an_explicit_folder_and_texts_still_work(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("The Kestrel library opens at nine on Saturdays.")
    monkeypatch.chdir(tmp_path / "docs")
    engine = make_engine(tmp_path / "index")
    report = engine.add_documents([Path.cwd(), "Tide tables are posted at the harbour office."])
    assert len(report.added) == 2 and report.failed == []
    assert engine.add_documents(".").unchanged == [report.added[0]]  # the string "." is an explicit folder


@pytest.mark.parametrize("doc_id", [None, "", "  ", 7, b"id", "bad\x00path.txt", "\ud800"])
def test_remove_document_refuses_what_is_no_id_or_path(tmp_path, doc_id):
    engine = make_engine(tmp_path / "index")
    engine.add_documents("Curlews feed on the mudflats at low tide.")
    with pytest.raises(DocumentError):
        engine.remove_document(doc_id)
    assert len(engine.list_documents()) == 1


def test_a_progress_argument_that_is_not_a_function_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="progress"):
        make_engine(tmp_path / "index").add_documents("Some text.", progress="yes")
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("query, top_k, min_score, error", [
    ("", None, None, "non-empty"), ("   ", None, None, "non-empty"), (None, None, None, "non-empty"),
    (b"bytes", None, None, "non-empty"), ("x\udc80y", None, None, "surrogate"), ("ok", 0, None, "top_k"),
    ("ok", 2.0, None, "top_k"), ("ok", True, None, "top_k"), ("ok", None, "high", "min_score"),
    ("ok", None, float("nan"), "min_score"), ("ok", None, True, "min_score"),
])
def test_retrieve_refuses_bad_arguments_with_invalid_prompt_error(tmp_path, query, top_k, min_score, error):
    from adaptrix_core.errors import InvalidPromptError

    with pytest.raises(InvalidPromptError, match=error):
        make_engine(tmp_path / "index").retrieve(query, top_k=top_k, min_score=min_score)


# -- 2. no read leaves a lock behind ----------------------------------------------------------------
def damage_vectors(folder: Path) -> None:
    path = next(folder.glob("vectors.*.faiss"))
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))


def overwrite_middle(folder: Path) -> None:
    """1 KB of garbage over the page boundary nearest the middle of the file (cells of one page, header of the next)."""
    db = folder / "chunks.sqlite"
    data = bytearray(db.read_bytes())
    boundary = round(len(data) / 2 / 4096) * 4096
    data[boundary - 512:boundary + 512] = b"\xa5" * 1024
    db.write_bytes(bytes(data))


def truncate_half(folder: Path) -> None:
    db = folder / "chunks.sqlite"
    os.truncate(db, db.stat().st_size // 2 + 100)


def break_chunks_btree(folder: Path) -> None:
    """Overwrite the page-type byte of the chunks table's root page (a valid header no more)."""
    db = folder / "chunks.sqlite"
    conn = REAL_CONNECT(db)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'chunks'").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as handle:
        handle.seek((root - 1) * page_size + (100 if root == 1 else 0))
        handle.write(b"\x07")


def change_a_stored_text(folder: Path) -> None:
    """Change one letter inside a chunk's text: SQLite's structure stays valid, the content does not."""
    db = folder / "chunks.sqlite"
    data = db.read_bytes()
    at = data.index(b"Lanternway")
    db.write_bytes(data[:at] + b"Lanternwax" + data[at + 10:])


def empty_database(folder: Path) -> None:
    (folder / "chunks.sqlite").write_bytes(b"")


def delete_database(folder: Path) -> None:
    (folder / "chunks.sqlite").unlink()


def garbage_database(folder: Path) -> None:
    (folder / "chunks.sqlite").write_bytes(b"definitely not sqlite" * 200)


PAGE_DAMAGE = {"overwritten middle": overwrite_middle, "truncated": truncate_half, "chunks b-tree page": break_chunks_btree,
               "changed text": change_a_stored_text, "emptied": empty_database, "deleted": delete_database,
               "garbage": garbage_database}


def reads(engine: ModularAdaptrixEngine) -> dict:
    """Every public read of the engine and of its store, as callables."""
    store = engine.documents._store()
    return {
        "index_stats": engine.index_stats, "list_documents": engine.list_documents,
        "retrieve": lambda: engine.retrieve("Which VPN does the company use?", min_score=-1),
        "rag_messages": lambda: engine.documents.rag_messages("Which VPN does the company use?", 4, -1),
        "store.check": store.check, "store.states": store.states, "store.documents": store.documents,
        "store.stats": store.stats, "store.search": lambda: store.search(np.ones(384, dtype=np.float32) / 384 ** 0.5, 3),
        "store.span": lambda: store.span("no-such-document", 0, 100),
        "store.spans": lambda: store.spans([("a", 0, 10), ("b", 5, 50)]),
    }


def prepare_state(state: str, corpus_index: Path, tmp_path: Path) -> Path:
    if state == "missing":
        return tmp_path / "index"
    if state == "crashed mid-commit":  # a process killed between the vector write and the commit
        assert run_crash(tmp_path, "before-commit").returncode == 3
        return tmp_path / "index"
    if state == "first commit failed":  # the empty tables committed, then the first real commit failed
        folder, real = tmp_path / "index", store_module._write_vectors
        store_module._write_vectors = raise_no_space
        try:
            with pytest.raises(IndexAccessError):
                IndexStore(folder).apply([synthetic_addition("a", 2, 0)], [], "m", 8)
        finally:
            store_module._write_vectors = real
        return folder
    folder = copy_of(corpus_index, tmp_path)
    if state == "damaged vectors":
        damage_vectors(folder)
    elif state in PAGE_DAMAGE:
        PAGE_DAMAGE[state](folder)
    return folder


STATES = ["healthy", "missing", "crashed mid-commit", "first commit failed", "damaged vectors", *PAGE_DAMAGE]


@pytest.mark.parametrize("state", STATES)
def test_no_read_leaves_a_connection_or_a_lock_behind(state, corpus_index, tmp_path, opened):
    folder = prepare_state(state, corpus_index, tmp_path)
    engine = make_engine(folder)
    before = snapshot(folder) if folder.exists() else None
    for name, read in reads(engine).items():
        try:
            read()
        except AdaptrixError:
            pass  # typed errors are fine here (damaged states); anything else fails the test
        assert all(is_closed(conn) for conn in opened), f"{name} left a connection open ({state})"
        assert writer_gets_the_lock_at_once(folder), f"{name} left a lock on the index ({state})"
    if state != "crashed mid-commit":  # there the first read rolls SQLite's hot journal back, as it must
        assert (snapshot(folder) if folder.exists() else None) == before


def test_the_passages_of_a_rag_prompt_are_widened_in_one_read(corpus_index, tmp_path, opened):
    engine = make_engine(copy_of(corpus_index, tmp_path), prompt_sentences=1)
    messages, sources = engine.documents.rag_messages("Which VPN does the company use?", 4, -1)
    assert "Lanternway" in messages[0]["content"]
    assert len(opened) == 2  # one for the search, one for the neighbourhoods of all 4 passages
    assert len(engine.retrieve("Which VPN does the company use?", top_k=4, min_score=-1)) == 4


def test_bytes_changed_in_the_unused_space_of_a_page_change_no_data(corpus_index, tmp_path):
    """SQLite pages keep free space between their cell pointers and their cells; damage there loses nothing."""
    folder = copy_of(corpus_index, tmp_path)
    before = make_engine(folder).list_documents()
    db = folder / "chunks.sqlite"
    data = bytearray(db.read_bytes())
    for start in range(4096, len(data), 4096):  # the first page whose free space spans 64 bytes
        cells, content = int.from_bytes(data[start + 3:start + 5], "big"), int.from_bytes(data[start + 5:start + 7], "big")
        header = 12 if data[start] in (2, 5) else 8
        if content - (header + 2 * cells) > 100:
            data[start + content - 80:start + content - 16] = b"\xa5" * 64
            break
    else:
        pytest.skip("no page with free space")
    db.write_bytes(bytes(data))
    engine = make_engine(folder)
    assert engine.list_documents() == before and engine.retrieve("VPN", top_k=1)[0]["text"]


# -- 4. damaged SQLite pages and files ----------------------------------------------------------------
@pytest.mark.parametrize("damage", list(PAGE_DAMAGE), ids=list(PAGE_DAMAGE))
def test_damaged_database_raises_index_corrupt_error_on_every_read_and_write(damage, corpus_index, tmp_path):
    folder = copy_of(corpus_index, tmp_path)
    some_id = make_engine(folder).list_documents()[0]["id"]
    PAGE_DAMAGE[damage](folder)
    damaged = snapshot(folder)
    engine = make_engine(folder)
    store = engine.documents._store()
    actions = {
        **reads(engine), "add_documents": lambda: engine.add_documents("A new sentence about ferries."),
        "remove_document": lambda: engine.remove_document(some_id),
        "store.apply": lambda: store.apply([], [some_id], engine.documents._embedding_name(), 384),
    }
    for name, action in actions.items():
        with pytest.raises(IndexCorruptError, match="damaged"):
            action()
        assert snapshot(folder) == damaged, name


def test_damage_after_a_process_verified_the_index_is_still_noticed(corpus_index, tmp_path):
    folder = copy_of(corpus_index, tmp_path)
    engine = make_engine(folder)
    assert len(engine.list_documents()) == 7
    truncate_half(folder)
    for action in (engine.list_documents, engine.index_stats, lambda: engine.retrieve("VPN")):
        with pytest.raises(IndexCorruptError):
            action()


def test_a_database_from_another_program_or_with_bad_metadata_is_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = REAL_CONNECT(foreign / "chunks.sqlite")
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    with pytest.raises(IndexCorruptError, match="no such table|metadata"):
        IndexStore(foreign).stats()
    store = IndexStore(tmp_path / "meta")
    store.apply([synthetic_addition("a", 2, 0)], [], "m", 8)
    conn = REAL_CONNECT(tmp_path / "meta" / "chunks.sqlite")
    conn.execute("UPDATE meta SET value = '../../etc/passwd' WHERE key = 'vectors_file'")
    conn.commit()
    conn.close()
    with pytest.raises(IndexCorruptError, match="vectors_file"):
        IndexStore(tmp_path / "meta").documents()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="a file, not a folder"):
        IndexStore(tmp_path / "file").apply([synthetic_addition("a", 2, 0)], [], "m", 8)
    with pytest.raises(ConfigError, match="a file, not a folder"):
        IndexStore(tmp_path / "file").stats()


def test_a_query_embedded_by_another_model_is_a_config_error(tmp_path):
    store = IndexStore(tmp_path)
    store.apply([synthetic_addition("a", 2, 0)], [], "model-a", 8)
    with pytest.raises(ConfigError, match="8 dimensions"):
        store.search(np.ones(16, dtype=np.float32), 3)
    with pytest.raises(ConfigError, match="model-a"):
        store.search(np.ones(8, dtype=np.float32), 3, embedding_model="model-b")
    assert len(store.search(np.ones(8, dtype=np.float32), 3, embedding_model="model-a")) == 2


# -- 4. symbolic link loops ------------------------------------------------------------------------------
def test_link_loops_are_per_file_failures_and_never_walk_out(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "good.txt").write_text("The Merrow bridge closes for repairs every March.")
    (docs / "sub" / "deep.md").write_text("Moorhen pond is drained in late autumn.")
    os.symlink(docs / "b.txt", docs / "a.txt")  # a.txt -> b.txt -> a.txt
    os.symlink(docs / "a.txt", docs / "b.txt")
    os.symlink(docs / "loop2", docs / "loop1")  # loop1 -> loop2 -> loop1 (no extension)
    os.symlink(docs / "loop1", docs / "loop2")
    os.symlink(docs, docs / "sub" / "up")  # a folder link back to the walked folder
    os.symlink("/", docs / "sub" / "root")  # and one to the file-system root, above it
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared.txt").write_text("Shared notes live outside the folder and are linked in.")
    os.symlink(outside, docs / "linked")
    engine = make_engine(tmp_path / "index")
    report = engine.add_documents([docs, docs / "a.txt", tmp_path / "missing.txt"])
    failed = dict(report.failed)
    for name in ("a.txt", "b.txt", "loop1", "loop2", "sub/up", "sub/root"):
        assert "symbolic link loop" in failed[str(docs / name)], name
    assert "does not exist" in failed[str(tmp_path / "missing.txt")]
    assert sorted(Path(report.sources[i]).name for i in report.added) == ["deep.md", "good.txt", "shared.txt"]
    with pytest.raises(DocumentError, match="symbolic link loop"):
        readers_module.read_file(docs / "a.txt")


def test_an_unreadable_subfolder_is_a_failure_not_an_error(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "locked").mkdir(parents=True)
    (docs / "ok.txt").write_text("The Osprey hide is open at dawn.")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(readers_module.os, "scandir", scandir)
    found = readers_module.walk(docs)
    assert [p.name for p in found.supported] == ["ok.txt"]
    assert found.failed == [(str(docs / "locked"), f"{str(docs / 'locked')!r} cannot be listed: Permission denied.")]


def test_random_bytes_as_a_pdf_or_html_are_document_errors(tmp_path):
    rng = np.random.default_rng(0)
    for number in range(20):
        pdf = tmp_path / f"r{number}.pdf"
        pdf.write_bytes(b"%PDF-1.4\n" + rng.bytes(int(rng.integers(0, 3000))))
        with pytest.raises(DocumentError):
            readers_module.read_file(pdf)
    html = tmp_path / "odd.html"
    html.write_text("<html><script>x</script><p>Only this &amp; that</p></scr" + "<" * 50)
    assert "Only this & that" in readers_module.read_file(html).text


# -- 4. failed writes leave nothing behind -------------------------------------------------------------
def raise_no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


WRITE_FAILURES = {
    "fsync of the new file": lambda mp: mp.setattr(os, "fsync", raise_no_space),
    "rename into place": lambda mp: mp.setattr(os, "replace", raise_no_space),
    "fsync of the folder": lambda mp: mp.setattr(os, "open", raise_no_space),
    "vector serialisation": lambda mp: mp.setattr(vec, "serialize", lambda index: (_ for _ in ()).throw(MemoryError())),
}


@pytest.mark.parametrize("failure", list(WRITE_FAILURES), ids=list(WRITE_FAILURES))
def test_a_failed_commit_leaves_the_committed_files_byte_for_byte(failure, tmp_path, monkeypatch):
    store = IndexStore(tmp_path)
    store.apply([synthetic_addition("first", 3, 0)], [], "m", 8)
    committed = snapshot(tmp_path)
    WRITE_FAILURES[failure](monkeypatch)
    with pytest.raises((IndexAccessError, MemoryError)) as raised:
        store.apply([synthetic_addition("second", 4, 1)], [], "m", 8)
    monkeypatch.undo()
    if isinstance(raised.value, OSError):
        assert isinstance(raised.value, IndexAccessError) and "No space left" in str(raised.value)
    assert snapshot(tmp_path) == committed and not list(tmp_path.glob("*.tmp"))
    for reader in (store, IndexStore(tmp_path)):
        assert [d["id"] for d in reader.documents()] == ["first"] and reader.stats()["generation"] == 1
    assert store.apply([synthetic_addition("second", 4, 1)], [], "m", 8) == 2


FULL_DISK_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {tests!r})
    from test_rag import synthetic_addition
    from adaptrix_core.errors import IndexAccessError
    from adaptrix_core.rag.store import IndexStore

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    store = IndexStore({folder!r})
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    try:
        store.apply([synthetic_addition("big", 3000, 1, dimension=64)], [], "m", 64)
    except IndexAccessError as exc:
        print("refused:", exc)
        sys.exit(0)
    sys.exit(1)
""")


def test_a_file_size_limit_mid_write_leaves_no_partial_file(tmp_path):
    folder = tmp_path / "index"
    IndexStore(folder).apply([synthetic_addition("small", 2, 0, dimension=64)], [], "m", 64)
    committed = snapshot(folder)
    script = FULL_DISK_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(folder))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "File too large" in result.stdout
    assert snapshot(folder) == committed and not list(folder.glob("*.tmp"))
    assert [d["id"] for d in IndexStore(folder).documents()] == ["small"]


def test_a_failed_first_commit_leaves_an_empty_index_that_works(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "_write_vectors", raise_no_space)
    with pytest.raises(IndexAccessError):
        IndexStore(tmp_path).apply([synthetic_addition("a", 2, 0)], [], "m", 8)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.sqlite"]
    store = IndexStore(tmp_path)
    assert store.stats()["generation"] == 0 and store.documents() == [] and store.search(np.ones(8), 2) == []
    assert store.apply([synthetic_addition("a", 2, 0, dimension=16)], [], "other", 16) == 1  # nothing stored yet


def test_a_writer_locked_out_past_the_wait_gets_index_access_error(tmp_path, monkeypatch):
    from adaptrix_core.rag import storage

    store = IndexStore(tmp_path)
    store.apply([synthetic_addition("first", 3, 0)], [], "m", 8)
    committed = snapshot(tmp_path)
    monkeypatch.setattr(storage, "BUSY_TIMEOUT", 0.05)
    other = REAL_CONNECT(tmp_path / "chunks.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process is mid-commit
        with pytest.raises(IndexAccessError, match="locked by another process"):
            store.apply([synthetic_addition("second", 2, 1)], [], "m", 8)
        assert [d["id"] for d in store.documents()] == ["first"]  # readers are not blocked by a writer
        other.execute("ROLLBACK")
        other.execute("BEGIN EXCLUSIVE")  # a commit in progress blocks readers too
        with pytest.raises(IndexAccessError, match="locked"):
            IndexStore(tmp_path).stats()
    finally:
        other.close()
    assert snapshot(tmp_path) == committed and not list(tmp_path.glob("*.tmp"))
    assert store.apply([synthetic_addition("second", 2, 1)], [], "m", 8) == 2
