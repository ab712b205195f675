#!/usr/bin/env python
"""Benchmark ``adaptrix serve`` over HTTP: concurrency vs one at a time, HTTP cost, a bounded load run.

A real ``adaptrix serve`` process (default model, the demo adapters copied into a temporary store,
the classifier router, 127.0.0.1 on a free port) is driven by client threads in this process
through the OpenAI-compatible API (streamed chat completions, greedy, natural stops, at most
``--max-tokens`` tokens). Measured in one run:

1. Throughput: the same ``--requests`` requests (demo-adapter tasks and open base-model questions,
   mixed) one at a time, then with 8 and 16 concurrent clients (closed loop: each client sends its
   next request when the last one ends). Tokens/s (completion tokens / wall time), request latency
   p50/p95, time to first token p50/p95 (client side: first streamed text). The concurrent answers
   are compared with the one-at-a-time ones (greedy: they must be equal). Target: >= 2.5x the
   one-at-a-time throughput with 8 clients.
2. HTTP cost: one ``POST /query`` against the same ``engine.query`` call on an engine loaded in this
   process (the server idle meanwhile), alternating, medians. Also the share of the client's time
   spent outside the server's own ``latency_ms`` (the HTTP layer proper). Target: <= 5%.
3. Load: ``--load-seconds`` (default 120) of ``--load-clients`` (16) clients sending a random mix:
   adapter and base chats, streams, ``auto``, completions, native ``/query``, and bad requests
   (unknown model, n=2, malformed JSON, bad temperature, empty messages) that must get their 4xx.
   At most ``--load-max-requests`` requests. Every good request must succeed; the server's RSS
   growth after warm-up must stay under ``--rss-bound-mib``; afterwards ``/health`` answers 200 and
   the queue and batch are empty. The server then gets SIGTERM and must exit with status 0.

Loopback only. Writes a table to stdout and JSON to ``--out`` (benchmarks/results/server.json).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import _busy_cpu_seconds
from harness import machine_info as machine_facts

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "server.json"
LONG_QUESTION = "Why do leaves change colour in autumn?"  # the base model's answer runs past 64 tokens
OPEN_QUESTIONS = (
    "What is the capital of France?", "Give one tip for sleeping better.", "Name three primary colours.",
    LONG_QUESTION, "What does a bicycle chain do?", "Suggest a name for a grey cat.",
    "How many legs does a spider have?", "What is photosynthesis, in one sentence?",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model id for adaptrix serve (default: the embedded one)")
    parser.add_argument("--adapters-dir", type=Path, default=REPO / "adapters", help="store to copy and serve")
    parser.add_argument("--router", default="classifier", help="router for model 'auto'")
    parser.add_argument("--requests", type=int, default=48, help="requests per throughput run")
    parser.add_argument("--max-tokens", type=int, default=64, help="cap on each answer (natural stops otherwise)")
    parser.add_argument("--clients", default="8,16", help="concurrent client counts to measure")
    parser.add_argument("--max-batch-size", type=int, default=16, help="server max_batch_size")
    parser.add_argument("--overhead-reps", type=int, default=10, help="alternating reps of HTTP vs direct")
    parser.add_argument("--load-seconds", type=float, default=120.0, help="length of the load run (0: skip)")
    parser.add_argument("--load-clients", type=int, default=16)
    parser.add_argument("--load-max-requests", type=int, default=3000)
    parser.add_argument("--rss-bound-mib", type=float, default=256.0, help="allowed server RSS growth in the load run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


# -- the server process ---------------------------------------------------------------------------
class Server:
    """``python -m adaptrix_core.cli serve`` on a free loopback port, with a temporary store and index."""

    def __init__(self, args: argparse.Namespace, scratch: Path):
        store = scratch / "adapters"
        shutil.copytree(args.adapters_dir, store)
        self.store = store
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "adaptrix_core.cli", "serve", "--port", str(self.port), "--model", args.model,
                   "--adapters-dir", str(store), "--data-dir", str(scratch / "index"), "--router", args.router,
                   "--max-batch-size", str(args.max_batch_size), "--log-level", "warning"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.log = open(scratch / "server.log", "w")  # noqa: SIM115 - open while the process runs
        self.process = subprocess.Popen(command, env=env, cwd=scratch, stdout=self.log, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"adaptrix serve exited with {self.process.returncode}; see {scratch / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("adaptrix serve did not become healthy in 300 s")

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            self.log.close()


# -- requests ---------------------------------------------------------------------------------------
def workload(store: Path, count: int, max_tokens: int, base_id: str) -> list[dict[str, Any]]:
    """``count`` chat requests cycling over the store's adapters (their demo test prompts) and the base model."""
    sources = []
    for name in sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        test = REPO / "data" / "demo" / name / "test.jsonl"
        if test.is_file():
            prompts = [json.loads(line)["prompt"] for line in test.read_text().splitlines()[:count]]
            sources.append((name, prompts))
    sources.append((base_id, list(OPEN_QUESTIONS)))
    return [{"model": sources[i % len(sources)][0], "temperature": 0, "max_tokens": max_tokens,
             "messages": [{"role": "user", "content": sources[i % len(sources)][1][(i // len(sources))
                                                                                  % len(sources[i % len(sources)][1])]}]}
            for i in range(count)]


def stream_chat(http: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Send one streamed chat request; text, completion tokens, latency and client-side TTFT."""
    started = time.perf_counter()
    ttft, parts, usage = None, [], None
    with http.stream("POST", "/v1/chat/completions",
                     json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        if response.status_code != 200:
            response.read()
            return {"ok": False, "status": response.status_code, "error": response.text[:200]}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return {"ok": False, "status": 200, "error": event["error"]["message"]}
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                text = choice["delta"].get("content")
                if text:
                    ttft = ttft if ttft is not None else time.perf_counter() - started
                    parts.append(text)
    latency = time.perf_counter() - started
    return {"ok": usage is not None, "status": 200, "text": "".join(parts), "tokens": (usage or {}).get("completion_tokens", 0),
            "latency_s": latency, "ttft_s": ttft if ttft is not None else latency}


class Contention:
    """Cores kept busy by processes other than this one and the server over a phase (0 on a quiet machine)."""

    def __init__(self, server_pid: int):
        import psutil

        self.processes = [psutil.Process(), psutil.Process(server_pid)]

    def _own(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes)

    def __enter__(self) -> Contention:  # noqa: PYI034 - typing.Self needs Python 3.11
        self.busy, self.own, self.wall = _busy_cpu_seconds(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy = _busy_cpu_seconds()
        other = (busy - self.busy) - (self._own() - self.own) if busy is not None and self.busy is not None else None
        self.other_cores = None if other is None else max(0.0, other) / (time.perf_counter() - self.wall)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_clients(url: str, requests: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Closed loop: ``clients`` threads take the next request when their last one ends."""
    import httpx

    results: list[dict[str, Any] | None] = [None] * len(requests)
    next_index = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                results[index] = stream_chat(http, requests[index])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    ok = [r for r in results if r and r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    latencies, ttfts = [r["latency_s"] for r in ok], [r["ttft_s"] for r in ok]
    return {"clients": clients, "requests": len(requests), "failed": len(requests) - len(ok), "wall_s": wall,
            "completion_tokens": tokens, "tokens_per_s": tokens / wall,
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
            "texts": [r["text"] if r and r["ok"] else None for r in results]}


# -- HTTP cost --------------------------------------------------------------------------------------
def http_cost(args: argparse.Namespace, server: Server, engine: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Alternate POST /query and the same engine.query on ``engine`` (in this process, order swapped every rep); medians."""
    import httpx

    prompt = request["messages"][0]["content"]
    gen = {"adapter": request["model"] if request["model"] in os.listdir(server.store) else None,
           "temperature": 0, "max_new_tokens": args.max_tokens}
    direct, over_http, inside = [], [], []
    with httpx.Client(base_url=server.url, timeout=600) as http:
        for rep in range(args.overhead_reps + 2):
            for side in ("direct", "http") if rep % 2 == 0 else ("http", "direct"):  # alternate which goes first
                started = time.perf_counter()
                if side == "direct":
                    expected = engine.query(prompt, **gen)
                    direct_s = time.perf_counter() - started
                else:
                    answer = http.post("/query", json={"prompt": prompt, **gen}).json()
                    http_s = time.perf_counter() - started
            if answer["text"] != expected.text:
                raise SystemExit(f"HTTP and direct answers differ: {answer['text']!r} vs {expected.text!r}")
            if rep >= 2:  # the first two are warm-up
                direct.append(direct_s)
                over_http.append(http_s)
                inside.append(answer["latency_ms"] / 1000)
    d, h, s = statistics.median(direct), statistics.median(over_http), statistics.median(inside)
    return {"prompt": prompt, "adapter": gen["adapter"], "completion_tokens": answer["completion_tokens"],
            "direct_median_s": d, "http_median_s": h, "server_latency_median_s": s,
            "http_vs_direct": h / d - 1, "http_layer_share": (h - s) / h, "reps": args.overhead_reps}


# -- load -------------------------------------------------------------------------------------------
BAD = [("unknown model", "/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404),
       ("n=2", "/v1/chat/completions", {"model": "auto", "n": 2, "messages": [{"role": "user", "content": "hi"}]}, 400),
       ("malformed JSON", "/v1/chat/completions", b'{"model": "auto", "messages": [', 400),
       ("bad temperature", "/v1/completions", {"model": "auto", "prompt": "hi", "temperature": -1}, 400),
       ("empty messages", "/v1/chat/completions", {"model": "auto", "messages": []}, 400)]


def load_run(args: argparse.Namespace, server: Server, pool: list[dict[str, Any]]) -> dict[str, Any]:
    """Random good and bad requests from ``--load-clients`` threads for ``--load-seconds`` (bounded count)."""
    import httpx

    deadline = time.monotonic() + args.load_seconds
    budget = iter(range(args.load_max_requests))
    lock = threading.Lock()
    counts: dict[str, int] = {}
    failures: list[str] = []
    rss = [server.rss_mib()]

    def note(kind: str, ok: bool, detail: str = "") -> None:
        with lock:
            counts[kind] = counts.get(kind, 0) + 1
            if not ok:
                failures.append(f"{kind}: {detail}"[:300])

    def one(http: httpx.Client, rng: random.Random) -> None:
        base = dict(rng.choice(pool), max_tokens=rng.randint(8, args.max_tokens))
        roll = rng.random()
        if roll < 0.10:
            name, path, body, status = rng.choice(BAD)
            response = (http.post(path, content=body, headers={"content-type": "application/json"})
                        if isinstance(body, bytes) else http.post(path, json=body))
            note(f"bad: {name}", response.status_code == status and "error" in response.json(),
                 f"{response.status_code} {response.text[:120]}")
        elif roll < 0.35:
            result = stream_chat(http, base)
            note("stream", result["ok"], str(result.get("error")))
        elif roll < 0.50:
            result = stream_chat(http, dict(base, model="auto")) if rng.random() < 0.5 else None
            if result is None:
                response = http.post("/v1/chat/completions", json=dict(base, model="auto"))
                result = {"ok": response.status_code == 200 and "choices" in response.json(), "error": response.text[:120]}
            note("auto", result["ok"], str(result.get("error")))
        elif roll < 0.60:
            response = http.post("/v1/completions", json={"model": base["model"], "prompt": base["messages"][0]["content"],
                                                          "max_tokens": base["max_tokens"], "temperature": 0})
            note("completion", response.status_code == 200 and "choices" in response.json(), response.text[:120])
        elif roll < 0.68:
            response = http.post("/query", json={"prompt": base["messages"][0]["content"], "temperature": 0,
                                                 "max_new_tokens": base["max_tokens"]})
            note("query", response.status_code == 200 and "text" in response.json(), response.text[:120])
        else:
            response = http.post("/v1/chat/completions", json=base)
            note("chat", response.status_code == 200 and "choices" in response.json(), response.text[:120])

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=600) as http:
            while time.monotonic() < deadline:
                with lock:
                    if next(budget, None) is None:
                        return
                try:
                    one(http, rng)
                except Exception as exc:  # noqa: BLE001 - a transport failure is a failed good request
                    note("transport", False, repr(exc))

    def sample() -> None:
        while time.monotonic() < deadline:
            time.sleep(5)
            rss.append(server.rss_mib())

    started = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(args.load_clients) as threads:
        for future in [threads.submit(client, seed) for seed in range(args.load_clients)]:
            future.result()
    wall = time.perf_counter() - started
    rss.append(server.rss_mib())
    health = httpx.get(f"{server.url}/health", timeout=30).status_code
    status = httpx.get(f"{server.url}/status", timeout=30).json()
    with httpx.Client(base_url=server.url, timeout=600) as http:
        after = stream_chat(http, pool[0])
    return {"seconds": wall, "clients": args.load_clients, "requests": sum(counts.values()), "by_kind": counts,
            "failed_good_requests": len([f for f in failures if not f.startswith("bad")]),
            "wrong_error_answers": len([f for f in failures if f.startswith("bad")]), "failures": failures[:20],
            "rss_start_mib": rss[0], "rss_end_mib": rss[-1], "rss_max_mib": max(rss),
            "rss_growth_mib": max(rss) - rss[0], "rss_bound_mib": args.rss_bound_mib,
            "health_after": health, "queue_depth_after": status["queue_depth"], "batch_size_after": status["batch_size"],
            "good_request_after": after["ok"]}


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import httpx

    scratch = Path(tempfile.mkdtemp(prefix="adaptrix-bench-server-"))
    report: dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_facts(), "load_average_before": os.getloadavg(),
                              "settings": {k: str(v) for k, v in vars(args).items()}}
    progress("starting adaptrix serve")
    server = Server(args, scratch)
    try:
        base_id = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        requests = workload(server.store, args.requests, args.max_tokens, base_id)
        # Warm-up: adapters loaded, every batch size and cache length touched once (a fresh process's first
        # allocations are slow on small VMs), then a few requests alone.
        clients_list = [int(c) for c in args.clients.split(",")]
        progress("warm-up")
        run_clients(server.url, requests, max(clients_list))
        run_clients(server.url, requests[:4], 1)
        runs = []
        for clients in [1, *clients_list]:
            progress(f"{len(requests)} requests, {clients} client(s)")
            with Contention(server.process.pid) as meter:
                runs.append(run_clients(server.url, requests, clients))
            runs[-1]["other_processes_cores"] = meter.other_cores
            progress(f"  {runs[-1]['tokens_per_s']:.1f} tok/s, others kept {meter.other_cores or 0:.2f} cores busy")
        alone = runs[0]["texts"]
        for run in runs:
            run["speedup"] = run["tokens_per_s"] / runs[0]["tokens_per_s"]
            run["answers_equal_one_at_a_time"] = sum(a is not None and a == b for a, b in zip(run.pop("texts"), alone))
        report["throughput"] = runs
        progress("HTTP cost: POST /query vs engine.query")
        long_request = {"model": base_id, "messages": [{"role": "user", "content": LONG_QUESTION}]}  # max_tokens long
        from adaptrix_core import ModularAdaptrixEngine

        with ModularAdaptrixEngine(model_id=args.model, adapters_dir=str(server.store)) as engine:
            report["http_cost"] = [http_cost(args, server, engine, r) for r in (requests[0], long_request)]
        if args.load_seconds > 0:
            progress(f"load run: {args.load_seconds:.0f} s, {args.load_clients} clients")
            with Contention(server.process.pid) as meter:
                report["load"] = load_run(args, server, requests)
            report["load"]["other_processes_cores"] = meter.other_cores
        report["exit_status_after_sigterm"] = server.stop()
    except BaseException:
        if server.process.poll() is None:
            server.process.kill()
        raise
    finally:
        report["server_log_tail"] = (scratch / "server.log").read_text()[-2000:]
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    print(f"\nadaptrix serve, {report['machine'].get('cpu_model')} ({report['machine'].get('cpu_count')} CPUs)")
    print(f"{'clients':>7} {'tok/s':>8} {'speedup':>8} {'lat p50':>8} {'lat p95':>8} {'ttft p50':>9} {'ttft p95':>9} "
          f"{'equal':>6} {'failed':>6} {'others':>6}")
    for run in report["throughput"]:
        print(f"{run['clients']:>7} {run['tokens_per_s']:>8.1f} {run['speedup']:>7.2f}x {run['latency_p50_s']:>7.2f}s "
              f"{run['latency_p95_s']:>7.2f}s {run['ttft_p50_s']:>8.2f}s {run['ttft_p95_s']:>8.2f}s "
              f"{run['answers_equal_one_at_a_time']:>3}/{run['requests']:<2} {run['failed']:>6} "
              f"{run['other_processes_cores'] or 0:>6.2f}")
    for cost in report["http_cost"]:
        print(f"\nHTTP cost, {cost['completion_tokens']} tokens ({cost['adapter'] or 'base model'}): direct "
              f"engine.query {cost['direct_median_s'] * 1000:.0f} ms, POST /query {cost['http_median_s'] * 1000:.0f} ms "
              f"({cost['http_vs_direct']:+.1%}); outside the server's own latency: {cost['http_layer_share']:.1%}")
    load = report.get("load")
    if load:
        print(f"\nload: {load['requests']} requests in {load['seconds']:.0f} s from {load['clients']} clients; "
              f"failed good requests {load['failed_good_requests']}, wrong error answers {load['wrong_error_answers']}; "
              f"RSS {load['rss_start_mib']:.0f} -> {load['rss_end_mib']:.0f} MiB (max {load['rss_max_mib']:.0f}, "
              f"bound +{load['rss_bound_mib']:.0f}); health after {load['health_after']}")
    print(f"exit status after SIGTERM: {report['exit_status_after_sigterm']}")


if __name__ == "__main__":
    sys.exit(main())
