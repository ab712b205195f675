"""The RAG prompt: numbered passages, cut down to the sentences that answer the question, then the question.

Small models lose a fact in a long context: SmolLM2-135M answers from one or two relevant sentences
but not from four 256-token passages. So, with ``sentences=N``, the passages are cut down to the N
sentences (over all passages) most relevant to the question:

* each passage is widened to whole sentences with the text of its neighbouring chunks, so a
  sentence cut by a chunk boundary comes back whole; repeated sentences (chunks overlap) count once.
  Sentences end at ``.``, ``!`` or ``?`` before a space, at a blank line, or before a line that
  starts a heading or a list item (other line breaks are hard wraps);
* a sentence's score is its embedding's cosine similarity to the question plus the IDF-weighted
  share of the question's content words (5-letter prefixes, stop words dropped) it contains, IDF
  over the candidate sentences. The lexical part keeps words that name the whole collection (the
  company's name) from outweighing the ones that name the fact.

The chosen sentences stay in document order under their passage's number; passages left without
a sentence are not shown. ``sentences=None`` shows whole passages. The instruction comes after the
passages, next to the question, where small models heed it. On the Quorvale handbook evaluation
(``scripts/eval_rag.py``) SmolLM2-135M answered 22 of 35 questions from one sentence and 14 to 18
from two (the extra sentence is often a near-miss fact it picks instead); with whole passages it
mixes facts up and mostly fails on numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

INSTRUCTION = "Answer the question using only the passages above, in one short sentence."
CITE = " Cite the passage you used like [1]."
# A sentence ends at . ! ? before a space, at a blank line, or before a line starting a heading or a list item
# (single line breaks inside a paragraph are hard wraps, not boundaries).
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\s*\n\s*\n\s*|\s*\n(?=\s*(?:#|[-*]\s|\d+\.\s))")
_STOP = frozenset("a an and are as at be by can do does did for from how in is it its many may much must of on or "
                  "our that the their this to was were what when where which who whom why with you your".split())


def sentences_in(text: str, start: int, end: int) -> list[str]:
    """Whole sentences of ``text`` that overlap the character range [start, end), whitespace collapsed."""
    found, position = [], 0
    for match in [*_BOUNDARY.finditer(text), None]:
        stop = match.start() if match else len(text)
        if stop > position and stop > start and position < end:
            sentence = " ".join(text[position:stop].split())
            if sentence:
                found.append(sentence)
        position = match.end() if match else len(text)
    return found


def _terms(text: str) -> set[str]:
    return {word[:5] for word in re.findall(r"[a-z0-9]+", text.lower()) if word not in _STOP}


def select(question: str, question_vector: Any, candidates: Sequence[Sequence[str]], encode: Callable,
           count: int) -> list[list[str]]:
    """Per passage, its sentences among the ``count`` best over all passages (document order kept)."""
    seen, flat = set(), []
    for number, sentences in enumerate(candidates):
        for position, sentence in enumerate(sentences):
            if sentence not in seen:
                seen.add(sentence)
                flat.append((number, position, sentence))
    if not flat:
        return [[] for _ in candidates]
    cosine = encode([s for _, _, s in flat]) @ question_vector
    terms = [_terms(s) for _, _, s in flat]
    wanted = _terms(question)
    idf = {t: math.log((len(flat) + 1) / (sum(t in ts for ts in terms) + 0.5)) for t in wanted}
    total = sum(idf.values()) or 1.0
    scores = [float(c) + sum(idf[t] for t in wanted & ts) / total for c, ts in zip(cosine, terms)]
    best = sorted(sorted(range(len(flat)), key=lambda i: -scores[i])[:count], key=lambda i: flat[i][:2])
    chosen: list[list[str]] = [[] for _ in candidates]
    for i in best:
        chosen[flat[i][0]].append(flat[i][2])
    return chosen


def build_prompt(question: str, sources: Sequence[dict[str, Any]], texts: Sequence[str], cite: bool = True) -> str:
    """The numbered passages (``[n] text``), then the instruction, then the question."""
    blocks = [f"[{source['citation']}] {text}" for source, text in zip(sources, texts)]
    instruction = INSTRUCTION + (CITE if cite else "")
    return "Passages:\n" + "\n\n".join(blocks) + f"\n\n{instruction}\nQuestion: {question}"
