"""Evaluate RAG on the Quorvale handbook: retrieval recall@k, and answers with vs without retrieval.

    python scripts/eval_rag.py [--top-k 4] [--no-answers] [--out docs/rag_results.json]

1. Indexes ``data/rag/corpus/`` (``scripts/make_rag_corpus.py`` writes it) into a temporary data
   directory with the configured chunking (``--chunk-size``/``--chunk-overlap``).
2. Retrieval, per question of ``data/rag/questions.jsonl``: *document recall@k* (the expected
   document is among the top k passages), *answer recall@k* (a top-k passage of that document
   contains an accepted answer; the target, >= 0.9) and, for PDF questions, whether that passage
   has the right page. Also the mean reciprocal rank of the answer passage.
3. Answers with the default model (``ModularAdaptrixEngine()``), greedy, ``--max-new-tokens`` 64:
   *with RAG* ``engine.query(question, use_rag=True, top_k=k, temperature=0)``; *without RAG*
   ``engine.query(question, temperature=0)``. An answer is right
   when it contains an accepted answer (case-insensitive, on word boundaries). Targets: >= 60%
   with RAG, near 0% without. Also reported: how many RAG prompts hold the fact at all (the
   sentences ``rag.prompt_sentences`` keeps of the passages) and how many answers cite a passage.

Prints a table and writes every question's passages and answers to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def contains_answer(text: str, answers: list[str]) -> bool:
    """True when ``text`` holds one of ``answers`` (case-insensitive; word characters at the edges must not continue)."""
    for answer in answers:
        start = r"(?<!\w)" if re.match(r"\w", answer[0]) else ""
        end = r"(?!\w)" if re.match(r"\w", answer[-1]) else ""
        if re.search(start + re.escape(answer) + end, text, flags=re.IGNORECASE):
            return True
    return False


def load_questions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate_retrieval(engine, questions: list[dict], top_k: int) -> list[dict]:
    rows = []
    for q in questions:
        started = time.perf_counter()
        hits = engine.retrieve(q["question"], top_k=top_k, min_score=-1.0)
        latency = (time.perf_counter() - started) * 1000
        names = [Path(h["source"]).name for h in hits]
        answer_ranks = [rank for rank, h in enumerate(hits, start=1)
                        if names[rank - 1] == q["source"] and contains_answer(h["text"], q["answers"])]
        first = answer_ranks[0] if answer_ranks else None
        rows.append({"question": q["question"], "source": q["source"], "doc_hit": q["source"] in names,
                     "answer_hit": first is not None, "answer_rank": first,
                     "page_ok": None if q.get("page") is None or first is None else hits[first - 1]["page"] == q["page"],
                     "latency_ms": round(latency, 2),
                     "passages": [{"source": n, "page": h["page"], "score": round(h["score"], 4), "start": h["start"],
                                   "end": h["end"]} for n, h in zip(names, hits)]})
    return rows


def evaluate_answers(engine, questions: list[dict], top_k: int, max_new_tokens: int) -> list[dict]:
    rows = []
    for number, q in enumerate(questions, start=1):
        result = engine.query(q["question"], use_rag=True, top_k=top_k, temperature=0, max_new_tokens=max_new_tokens)
        with_rag, sources = result.text, result.sources
        without = engine.query(q["question"], temperature=0, max_new_tokens=max_new_tokens).text
        rows.append({"question": q["question"], "answers": q["answers"], "rag_answer": with_rag,
                     "rag_correct": contains_answer(with_rag, q["answers"]), "plain_answer": without,
                     "plain_correct": contains_answer(without, q["answers"]),
                     "fact_in_prompt": contains_answer(" ".join(s["excerpt"] for s in sources), q["answers"]),
                     "cited": sorted({int(n) for n in re.findall(r"\[(\d+)\]", with_rag)}),
                     "sources": [{"source": Path(s["source"]).name, "ordinal": s["ordinal"], "page": s["page"],
                                 "score": round(s["score"], 4), "excerpt": s["excerpt"]} for s in sources]})
        print(f"  {number}/{len(questions)} rag={'ok' if rows[-1]['rag_correct'] else '--'} "
              f"plain={'ok' if rows[-1]['plain_correct'] else '--'}  {q['question']}", file=sys.stderr, flush=True)
    return rows


def share(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(bool(v) for v in values) / len(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "rag" / "corpus")
    parser.add_argument("--questions", type=Path, default=ROOT / "data" / "rag" / "questions.jsonl")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--chunk-overlap", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt-sentences", type=int, default=1,
                        help="rag.prompt_sentences: sentences of the passages shown to the model (0: whole passages)")
    parser.add_argument("--no-answers", action="store_true", help="retrieval only (no language model)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "rag_results.json")
    args = parser.parse_args()

    from adaptrix_core import ModularAdaptrixEngine

    questions = load_questions(args.questions)
    results: dict = {"settings": {"top_k": args.top_k, "chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap,
                                  "prompt_sentences": args.prompt_sentences,
                                  "max_new_tokens": args.max_new_tokens, "questions": len(questions),
                                  "answer_path": "engine.query(question, use_rag=True|False, temperature=0)"}}
    with tempfile.TemporaryDirectory(prefix="adaptrix-rag-eval-") as data_dir:
        engine = ModularAdaptrixEngine(config={"rag": {"data_dir": data_dir, "chunk_size": args.chunk_size,
                                                       "chunk_overlap": args.chunk_overlap,
                                                       "prompt_sentences": args.prompt_sentences or None}})
        report = engine.add_documents(args.corpus)
        if report.failed:
            raise SystemExit(f"could not index the corpus: {report.failed}")
        stats = engine.index_stats()
        results["index"] = {"documents": stats["documents"], "chunks": stats["chunks"], "seconds": round(report.seconds, 2)}
        retrieval = evaluate_retrieval(engine, questions, args.top_k)
        ranks = [r["answer_rank"] for r in retrieval]
        results["retrieval"] = {
            f"document_recall@{args.top_k}": share(retrieval, "doc_hit"),
            f"answer_recall@{args.top_k}": share(retrieval, "answer_hit"),
            "answer_mrr": statistics.mean(1 / r if r else 0 for r in ranks),
            "pdf_page_accuracy": share(retrieval, "page_ok"),
            "latency_ms_p50": statistics.median(r["latency_ms"] for r in retrieval),
            "per_question": retrieval,
        }
        if not args.no_answers:
            engine.initialize()
            started = time.perf_counter()
            answers = evaluate_answers(engine, questions, args.top_k, args.max_new_tokens)
            results["answers"] = {"model": engine.get_model_info()["base_model"], "rag_correct": share(answers, "rag_correct"),
                                  "plain_correct": share(answers, "plain_correct"),
                                  "fact_in_prompt": share(answers, "fact_in_prompt"),
                                  "rag_citing": sum(bool(a["cited"]) for a in answers) / len(answers),
                                  "seconds": round(time.perf_counter() - started, 1), "per_question": answers}
            engine.cleanup()
    print_table(results, args.top_k)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def print_table(results: dict, top_k: int) -> None:
    from rich.console import Console
    from rich.table import Table

    r = results["retrieval"]
    table = Table(title=f"RAG on the Quorvale handbook ({results['settings']['questions']} questions, "
                        f"{results['index']['chunks']} chunks)")
    for column in ("measure", "value", "target"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    table.add_row(f"answer recall@{top_k}", f"{r[f'answer_recall@{top_k}']:.1%}", ">= 90%")
    table.add_row(f"document recall@{top_k}", f"{r[f'document_recall@{top_k}']:.1%}", "")
    table.add_row("answer passage MRR", f"{r['answer_mrr']:.3f}", "")
    table.add_row("PDF page of answer passage right", f"{r['pdf_page_accuracy']:.1%}", "")
    table.add_row("retrieval latency p50 (ms)", f"{r['latency_ms_p50']:.1f}", "")
    if "answers" in results:
        a = results["answers"]
        table.add_row("answers with the fact, with RAG", f"{a['rag_correct']:.1%}", ">= 60%")
        table.add_row("answers with the fact, without RAG", f"{a['plain_correct']:.1%}", "near 0%")
        table.add_row("RAG prompts holding the fact", f"{a['fact_in_prompt']:.1%}", "")
        table.add_row("RAG answers citing a passage", f"{a['rag_citing']:.1%}", "")
    Console().print(table)


if __name__ == "__main__":
    main()
