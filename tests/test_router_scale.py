"""The keyword and semantic routers' fast paths (for stores of thousands of adapters) score exactly as before.

Each test recomputes the scores the straightforward way (every keyword's regex on the prompt; one
similarity matrix per card) and compares them with the routers' indexed / stacked versions.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from adaptrix_core.config import RouterSettings
from adaptrix_core.routing.selection import AdapterCard, RouterResources, card_texts
from adaptrix_plugins.routers.keyword import KeywordRouter
from adaptrix_plugins.routers.semantic import TOP, SemanticRouter

ODD_KEYWORDS = ["c++", "e-mail", ".net", "naïve", "straße", "İstanbul", "r&d", "--", "x86-64", "q&a", "ΣΊΣΥΦΟΣ"]


def _cards(rng: random.Random, count: int) -> list[AdapterCard]:
    words = [f"w{n}" for n in range(count * 2)] + ODD_KEYWORDS
    cards = []
    for index in range(count):
        keywords = rng.sample(words, rng.randint(1, 5)) + ([f"w{index} w{index + 1}"] if index % 7 == 0 else [])
        cards.append(AdapterCard(f"a{index}", f"adapter {index}", tuple(keywords), (f"do w{index} now",)))
    return cards


def _reference_keyword_scores(prompt: str, cards: list[AdapterCard], extra: dict[str, list[str]]) -> dict[str, float]:
    keywords = {c.name: {k.lower() for k in (*c.keywords, *extra.get(c.name, ()))} for c in cards}
    totals = {c.name: 0.0 for c in cards}
    for card in cards:
        for word in sorted(keywords[card.name]):
            frequency = sum(word in words for words in keywords.values())
            if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE):
                totals[card.name] += math.log((1 + len(cards)) / (1 + frequency)) + 1.0
    return {name: 1.0 - math.exp(-total) for name, total in totals.items()}


def test_keyword_index_scores_exactly_like_matching_every_keyword():
    rng = random.Random(7)
    cards = _cards(rng, 300)
    extra = {"a3": ["ΣΊΣΥΦΟΣ", "extra word"]}
    router = KeywordRouter(RouterSettings(keywords=extra))
    vocabulary = [f"w{n}" for n in range(620)] + ODD_KEYWORDS + ["C++", "E-MAIL", "ISTANBUL", "istanbul", "Straße",
                                                                 "sısyphos", "extra", "word", "dot.net", "w1w2"]
    prompts = ["", "nothing here", "Use c++ and .NET for r&d: x86-64!", "İstanbul and STRASSE", "w0 w1 and w7 w8"]
    prompts += [" ".join(rng.choices(vocabulary, k=rng.randint(1, 12))) for _ in range(200)]
    for prompt in prompts:
        decision = router.route(prompt, list(cards))  # a new list of the same cards: the cached index is reused
        assert decision.scores == _reference_keyword_scores(prompt, cards, extra), prompt
    changed = [AdapterCard("a0", "changed", ("brandnew",), ())] + cards[1:]
    assert router.route("a brandnew thing", changed).selected == {"a0": 1.0}


@pytest.fixture(scope="module")
def semantic(tmp_path_factory):
    from adaptrix_core.embeddings import get_embedder

    resources = RouterResources(get_embedder, tmp_path_factory.mktemp("semantic-scale"))
    return SemanticRouter(RouterSettings(threshold=0.5), resources)


def test_semantic_stacked_scores_equal_per_card_scores(semantic):
    rng = random.Random(3)
    topics = ["invoices", "tides", "recipes", "poems", "taxes", "rockets", "gardening", "chess"]
    cards = [AdapterCard(f"s{n}", f"Helps with {rng.choice(topics)} number {n}.", (),
                         tuple(f"Question {k} about {rng.choice(topics)}?" for k in range(n % 5)))
             for n in range(40)]
    cards.append(AdapterCard("wide", "Answers everything about tides.", (),
                             tuple(f"When is high tide number {k} at the pier? Tell me now." for k in range(37))))
    prompts = ["How do I file my taxes?", "Write a poem about tides.", cards[2].description, "Question 1 about chess?"]
    vectors = semantic.resources.embedder.encode(prompts)
    exclude = [None, None, cards[2].description, "Question 1 about chess?"]
    fast = semantic._scores(vectors, cards, exclude=exclude)
    for column, card in enumerate(cards):
        card_vectors, texts = semantic._card_vectors(card)
        assert list(texts) == card_texts(card)
        similarity = vectors @ card_vectors.T
        for row, text in enumerate(exclude):
            similarity[row, [i for i, t in enumerate(texts) if t == text]] = -1.0
        top = np.sort(similarity, axis=1)[:, -min(TOP, similarity.shape[1]):]
        np.testing.assert_allclose(fast[:, column], np.clip(top.mean(axis=1), 0.0, 1.0), atol=1e-6)
    decision = semantic.route("Write a poem about tides.", cards)
    assert decision.scores == pytest.approx({c.name: float(s) for c, s in zip(cards, fast[1])}, abs=1e-6)
