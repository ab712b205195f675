#!/usr/bin/env python
"""Gateway overhead: what routing and RAG in Adaptrix add to a request sent on to an upstream server.

The upstream is the fake vLLM of ``tests/fake_vllm.py`` (a real HTTP server with a fixed tiny
answer, in its own process, serving every adapter of the store), so the figures are the gateway's
own costs, not generation. The store holds ``--cards`` synthetic adapters with distinct routing
cards (``gateway_store.py``) plus the three demo adapters; the document index holds ``--docs``
generated documents.

Sides, one request each per round, interleaved (``harness.interleaved_rounds``):

* ``direct``: an httpx POST of the same chat request straight to the upstream (the client already
  knows the adapter): the baseline;
* ``named``: ``engine.query(prompt, adapter=name)`` on a ``remote`` engine: the gateway without routing;
* ``keyword`` / ``semantic``: ``adapter="auto"`` with that router over all the cards, the store's
  files checked at most once a second (``router.refresh_interval``, the default);
* ``keyword, check every request``: ``router.refresh_interval: 0``, the store's files (two per
  adapter) checked before every routed request: what that setting costs at 1,000 adapters;
* ``keyword+rag`` / ``semantic+rag``: those with ``use_rag=True``, whole passages in the prompt
  (``rag.prompt_sentences: null``, the setting docs/scale-out.md recommends for a gateway: the
  upstream's models read long contexts); ``semantic+rag`` embeds the question once for both;
* ``semantic+rag, 1 sentence``: with the default ``rag.prompt_sentences: 1``, which embeds every
  sentence of the retrieved passages for each question.

After the warm-up the heap is frozen (``gc.freeze()``), as ``adaptrix serve`` does once loaded, so
the harness's collection before each call does not walk the engines' 1,000 cards (that walk evicted
them from the CPU caches and was charged to the next call). Every side meets the question as new:
the embedder's memory of recent questions is cleared before each request (within a request,
routing and retrieval share the question's embedding).
The overhead of a side is its latency minus the ``direct`` latency of the same round. A second
table times the parts alone: the store check, each router, the prompt embedding, retrieval. The
upstream's own CPU use counts as "other processes" for the contention meter, hence the default
threshold of 1 core. Target:
p50 overhead <= ``--target-ms`` (15 ms) at 1,000 cards. Writes ``benchmarks/results/gateway.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from gateway_store import THINGS, build_store  # noqa: E402

harness.offline_environment()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TESTS = harness.REPO_ROOT / "tests"
QUICK = {"cards": 200, "rounds": 5, "docs": 10, "probe": 10}
ANSWER = "ok"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_gateway.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cards", type=int, default=1_000, help="synthetic adapters in the store")
    parser.add_argument("--rounds", type=int, default=100, help="kept rounds (one request per side each)")
    parser.add_argument("--docs", type=int, default=60, help="generated documents in the RAG index")
    parser.add_argument("--probe", type=int, default=100, help="timed calls per part in the breakdown table")
    parser.add_argument("--target-ms", type=float, default=15.0, help="p50 overhead target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the store, index and semantic calibration here and reuse them (default: a temp dir)")
    harness.add_common_args(parser, default_out=harness.RESULTS_DIR / "gateway.json", contention_threshold=1.0,
                            max_redo=20, threads_help="torch threads of the embedder (default: torch's)")
    return harness.parse_with_quick(parser, argv, QUICK, name="gateway")


def serve_upstream(port: int, store: Path) -> None:
    """The fake vLLM serving every adapter of ``store`` with the answer ``ok`` (runs until killed)."""
    sys.path.insert(0, str(TESTS))
    import uvicorn
    from fake_vllm import FakeVLLM

    names = sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))
    fake = FakeVLLM(loras={name: f"/adapters/{name}" for name in names}, answer=ANSWER)
    uvicorn.run(fake.app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_upstream(store: Path) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--upstream", str(port), str(store)])
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the fake upstream did not start")


def write_documents(folder: Path, count: int, rng: random.Random) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        thing = rng.choice(THINGS)
        lines = [f"Handbook page {index} about {thing}."]
        lines += [f"Rule {n}: {thing} from office {rng.randint(1, 90)} are checked within {rng.randint(2, 30)} days "
                  f"and filed under code {rng.randint(100, 999)}." for n in range(12)]
        (folder / f"page-{index:03d}.txt").write_text(" ".join(lines))


def make_engine(url: str, store: Path, index: Path, router: str):
    from adaptrix_core import ModularAdaptrixEngine

    config = {"router": {"top_k": 1}, "rag": {"data_dir": str(index), "prompt_sentences": None},
              "plugins": {"remote": {"retries": 0, "models_ttl": 3600}}}
    engine = ModularAdaptrixEngine(url, backend="remote", adapters_dir=str(store), router=router, config=config)
    engine.initialize()
    return engine


def register_remote_backend() -> None:
    """Register the ``remote`` backend by hand where the installed entry points predate it."""
    import adaptrix_plugins.backends.remote as module
    from adaptrix_core.plugins import get_plugin_manager
    from adaptrix_core.registry import collect

    if "remote" not in collect().backends:
        get_plugin_manager().register(module, name="backend_remote")


def timed(call) -> dict[str, float]:
    started = time.perf_counter()
    call()
    return {"seconds": time.perf_counter() - started}


def p50_ms(call, count: int) -> dict[str, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(harness.ms(time.perf_counter() - started))
    summary = harness.summarize(samples)
    return {"p50": round(summary["p50"], 3), "p95": round(summary["p95"], 3)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import httpx

    register_remote_backend()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="adaptrix-gateway-"))
    store, index = work / "adapters", work / "index"
    started = time.perf_counter()
    if args.work is not None and store.is_dir():  # the same seed and count give the same cards
        shutil.rmtree(work / "docs", ignore_errors=True)
        shutil.rmtree(index, ignore_errors=True)
        cards = build_store(work / "scratch", args.cards, seed=args.seed)
        shutil.rmtree(work / "scratch")
    else:
        cards = build_store(store, args.cards, seed=args.seed, demo_from=harness.REPO_ROOT / "adapters")
    print(f"store: {args.cards} synthetic + 3 demo adapters in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    process, url = start_upstream(store)
    try:
        return run(args, url, store, index, work, cards, rng, httpx)
    finally:
        process.kill()
        process.wait(timeout=30)


def run(args, url, store, index, work, cards, rng, httpx) -> int:
    keyword = make_engine(url, store, index, "keyword")
    write_documents(work / "docs", args.docs, rng)
    report = keyword.add_documents(work / "docs")
    print(f"index: {report.chunks_added} chunks from {args.docs} documents", file=sys.stderr)
    started = time.perf_counter()
    semantic = make_engine(url, store, index, "semantic")
    semantic.route("warm up")  # the first semantic route embeds every card and calibrates (saved for later)
    calibration_s = time.perf_counter() - started
    print(f"semantic router: embeddings and calibration of {len(cards) + 3} cards in {calibration_s:.1f} s", file=sys.stderr)
    prompts = [(card["examples"][0], card["name"]) for card in rng.sample(cards, min(50, len(cards)))]
    accuracy = {name: sum(engine.route(p).selected.keys() == {n} for p, n in prompts) / len(prompts)
                for name, engine in (("keyword", keyword), ("semantic", semantic))}
    print(f"routing: the prompts' own adapter chosen {accuracy}", file=sys.stderr)
    http = httpx.Client(timeout=30)
    turn = {"n": 0}

    def current() -> tuple[str, str]:
        return prompts[turn["n"] % len(prompts)]

    def direct() -> dict[str, float]:  # the first side of a round: the round's prompt changes here
        turn["n"] += 1
        prompt, name = current()
        body = {"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16,
                "temperature": 0.7, "top_p": 0.9, "stream": False}
        return timed(lambda: http.post(f"{url}/chat/completions", json=body).raise_for_status())

    def gateway(engine, auto: bool = True, rag: bool = False, refresh: float = 1.0, sentences: int | None = None):
        def side() -> dict[str, float]:
            prompt, name = current()
            engine.config.router.refresh_interval = refresh
            engine.config.rag.prompt_sentences = sentences
            engine.embedder.forget_recent()
            return timed(lambda: engine.query(prompt, adapter="auto" if auto else name, use_rag=rag, max_new_tokens=16))
        return side

    sides = [harness.Side("direct", direct), harness.Side("named", gateway(keyword, auto=False)),
             harness.Side("keyword", gateway(keyword)), harness.Side("semantic", gateway(semantic)),
             harness.Side("keyword, check every request", gateway(keyword, refresh=0.0)),
             harness.Side("keyword+rag", gateway(keyword, rag=True)),
             harness.Side("semantic+rag", gateway(semantic, rag=True)),
             harness.Side("semantic+rag, 1 sentence", gateway(semantic, rag=True, sentences=1))]
    for side in sides:
        side.run()  # warm-up: connections, embeddings, caches
    collection_ms = {"before freeze": p50_ms(gc.collect, 5)}
    gc.freeze()  # what `adaptrix serve` does once loaded (cli/serve.py: freeze_startup_heap)
    collection_ms["after freeze"] = p50_ms(gc.collect, 5)
    print(f"full garbage collection: {collection_ms['before freeze']['p50']:.1f} ms before gc.freeze(), "
          f"{collection_ms['after freeze']['p50']:.1f} ms after", file=sys.stderr)
    rounds = harness.interleaved_rounds(sides, args.rounds, contention_threshold=args.contention_threshold,
                                        max_redo=args.max_redo, label="gateway", side_width=32)
    kept = rounds.kept
    rows, figures = [], {}
    direct_ms = harness.summarize([harness.ms(r["seconds"]) for r in kept if r["side"] == "direct"])
    for side in sides[1:]:
        extra = harness.paired(kept, side.name, "direct", lambda a, b: harness.ms(a["seconds"] - b["seconds"]))
        latency = harness.summarize([harness.ms(r["seconds"]) for r in kept if r["side"] == side.name])
        overhead = harness.summarize(extra)
        figures[side.name] = {"latency_ms": latency, "overhead_ms": overhead}
        rows.append((side.name, f"{latency['p50']:.2f}", f"{overhead['p50']:.2f}", f"{overhead['p95']:.2f}",
                     "yes" if overhead["p50"] <= args.target_ms else "no"))
    harness.print_table(f"Gateway overhead per request, {len(cards) + 3} adapters in the store (direct p50 "
                        f"{direct_ms['p50']:.2f} ms)", ("side", "latency p50 ms", "overhead p50 ms", "overhead p95 ms",
                                                        f"<= {args.target_ms:g} ms"), rows)
    prompt, candidates, own = prompts[0][0], keyword.routing.candidates(), semantic.routing.candidates()
    def fresh(call):  # each call meets the question as new
        def run():
            keyword.embedder.forget_recent()
            call()
        return run

    keyword.config.router.refresh_interval = 0.0
    check_ms = p50_ms(keyword.routing.candidates, args.probe)
    keyword.config.router.refresh_interval = 1.0
    parts = {
        "store check, every file (RouterService.candidates, refresh_interval 0)": check_ms,
        "store check within the interval (refresh_interval 1 s)": p50_ms(keyword.routing.candidates, args.probe),
        "keyword route (engine.route)": p50_ms(lambda: keyword.route(prompt), args.probe),
        "keyword router alone": p50_ms(lambda: keyword.get_router().route(prompt, candidates), args.probe),
        "semantic route (engine.route)": p50_ms(fresh(lambda: semantic.route(prompt)), args.probe),
        "semantic router alone": p50_ms(fresh(lambda: semantic.get_router().route(prompt, own)), args.probe),
        "prompt embedding": p50_ms(fresh(lambda: keyword.embedder.encode([prompt])), args.probe),
        "retrieve (top 4)": p50_ms(fresh(lambda: keyword.retrieve(prompt)), args.probe),
    }
    harness.print_table("Parts, timed alone", ("part", "p50 ms", "p95 ms"),
                        [(name, f"{v['p50']:.2f}", f"{v['p95']:.2f}") for name, v in parts.items()])
    contended = rounds.still_contended
    notes = [f"{rounds.redone} contended rounds redone; {contended} kept runs were contended anyway"]
    harness.print_notes(notes)
    harness.write_results(args.out, {
        "benchmark": "gateway", "command": harness.command_line(), "machine": harness.machine_info(),
        "cards": len(cards) + 3, "documents": args.docs, "chunks": report.chunks_added, "rounds": args.rounds,
        "target_ms": args.target_ms, "direct_ms": direct_ms, "sides": figures, "parts_ms": parts,
        "semantic_calibration_s": round(calibration_s, 2), "gc_collect_ms": collection_ms, "routing_accuracy": accuracy, "notes": notes,
        "runs": rounds.runs,
    })
    for engine in (keyword, semantic):
        engine.cleanup()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--upstream":
        serve_upstream(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(main())
