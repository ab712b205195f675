"""The RAG prompt: numbered passages (optionally cut down to their most relevant sentences) + the question.

Small models lose a fact in a long context: SmolLM2-135M answers from one relevant sentence but not
from four 256-token passages. So, with ``sentences=N``, each passage is cut down to the N sentences
whose embeddings are most similar to the question's, kept in their original order; ``None`` puts
whole passages in. Sentences are split on ``.``, ``!``, ``?`` followed by a space, and on line
breaks. The instruction comes after the passages, next to the question, where small models heed it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

INSTRUCTION = ("Answer the question using only the passages above, in one short sentence, and cite the passage "
               "you used like [1]. If the passages do not answer it, say that you do not know.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part and part.strip()]


def excerpts(question_vector: Any, passages: Sequence[str], embedder: Any, sentences: int | None) -> list[str]:
    """Each passage, or its ``sentences`` sentences most similar to the question (in document order)."""
    if sentences is None:
        return [" ".join(p.split()) for p in passages]
    split = [split_sentences(p) for p in passages]
    flat = [s for parts in split for s in parts]
    scores = embedder.encode(flat) @ question_vector if flat else []
    result, offset = [], 0
    for parts in split:
        ranked = sorted(range(len(parts)), key=lambda i: -float(scores[offset + i]))[:sentences]
        result.append(" ".join(" ".join(parts[i].split()) for i in sorted(ranked)))
        offset += len(parts)
    return result


def build_prompt(question: str, sources: Sequence[dict[str, Any]], texts: Sequence[str]) -> str:
    """Numbered passages labelled with their file (and page), then the instruction and the question."""
    blocks = []
    for number, (source, text) in enumerate(zip(sources, texts), start=1):
        where = "text" if source["source"].startswith("text:") else Path(source["source"]).name
        if source["page"] is not None:
            where += f", page {source['page']}"
        blocks.append(f"[{number}] ({where}) {text}")
    return "Passages:\n" + "\n\n".join(blocks) + f"\n\n{INSTRUCTION}\nQuestion: {question}"
