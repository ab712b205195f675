"""Helpers shared by the server tests: two trained tiny adapters, waiting for health, reading SSE."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "sigma"]
#: Adapter name -> routing keywords. Each adapter learns to answer every "say <word>" with its own name.
ADAPTERS = {"yes": ["affirm", "agree"], "no": ["deny", "refuse"]}
#: Words before "say ...": the adapters learn to answer whatever leads the request (the tests' prompts vary it).
LEADS = ["", "please ", "now ", "ok, ", "I think so: ", "then tell me and "]


def train_adapters(engine: Any, only: str | None = None) -> None:
    """Train and save the 'yes' and 'no' adapters (or just ``only``) on a tiny engine (about a second each)."""
    for seed, (name, keywords) in enumerate(ADAPTERS.items()):
        if only is not None and name != only:
            continue
        data = [{"prompt": f"{LEADS[i % len(LEADS)]}say {WORDS[i % len(WORDS)]}", "response": name} for i in range(24)]
        engine.train_adapter(name, data, epochs=8, learning_rate=2e-2, layers="all", batch_size=8, eval_split=0.0,
                             seed=seed, keywords=keywords, description=f"answers {name}")


def wait_until_healthy(get: Callable[[str], Any], timeout: float = 120.0) -> None:
    """Poll GET /health until it answers 200 (the model loads in the background)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = get("/health")
            if last.status_code == 200:
                return
        except (OSError, httpx.TransportError) as exc:  # the process is not listening yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"the server did not become healthy in {timeout} s (last answer: {last!r})")


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of a server-sent-event body: parsed JSON, or the literal '[DONE]'."""
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_text(events: list[Any], chat: bool) -> str:
    """The text of a completion stream's chunks, joined."""
    parts = []
    for event in events:
        if isinstance(event, dict) and event.get("choices"):
            choice = event["choices"][0]
            parts.append((choice["delta"].get("content") or "") if chat else choice["text"])
    return "".join(parts)
