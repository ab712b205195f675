"""The request scheduler on tiny models: iteration-level batching across adapters without cross-talk.

Every greedy request through the scheduler must give exactly the text ``engine.query`` gives it
alone, whatever joins or leaves the batch meanwhile (llama, qwen2 and gemma2 with grouped K/V heads;
gemma2 with a sliding window shorter than the sequences). Adapters are fresh LoRA adapters whose B
matrices are drawn at random, so each one really changes the answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import torch

from adaptrix_core import ModularAdaptrixEngine
from adaptrix_core.adapters.store import AdapterManager
from adaptrix_core.errors import (
    AdapterNotFoundError,
    ConfigError,
    ContextOverflowError,
    InvalidGenerationParameterError,
    InvalidPromptError,
    QueueFullError,
    RequestCancelledError,
    SchedulerStoppedError,
)
from adaptrix_core.server.handle import TextTracker
from adaptrix_core.server.scheduler import Scheduler

GREEDY = {"temperature": 0}
PROMPTS = [
    "say alpha", "Hello, how are you today?", "The quick brown fox jumps", "What is the capital of France?",
    "Numbers: 0 1 2 3", "Write a Python function that adds two numbers.", "Tell me a short story", "Be brief.",
]
ADAPTERS = [None, "a1", "a2", "a1", "mix", None, "a2", "a1"]
LENGTHS = [12, 30, 5, 22, 17, 40, 9, 26]


def randomize_lora(engine: ModularAdaptrixEngine, name: str, seed: int) -> None:
    """Give adapter ``name`` random, non-zero B matrices so that it changes the model's answers."""
    lora = engine.backend.lora
    marker = f".{lora.internal(name)}."
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in lora.peft.named_parameters():
            if marker in f"{parameter_name}." and "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def make_engine(folder: Path, store: Path, **config) -> ModularAdaptrixEngine:
    engine = ModularAdaptrixEngine(str(folder), device="cpu", adapters_dir=str(store),
                                   config={"adapters": {"directory": str(store)}, **config}).initialize()
    for seed, name in enumerate(("a1", "a2")):
        engine.create_adapter(name, layers="all", rank=4, dropout=0.0)
        randomize_lora(engine, name, seed)
    return engine


def spec(adapter):
    return {"a1": 0.6, "a2": 0.4} if adapter == "mix" else adapter


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma2"])
def engine(request, tiny_model_dir, tmp_path_factory, single_torch_thread):
    engine = make_engine(tiny_model_dir(request.param), tmp_path_factory.mktemp("store"))
    yield engine
    engine.cleanup()


@pytest.fixture(scope="module")
def llama(tiny_model_dir, tmp_path_factory, single_torch_thread):
    engine = make_engine(tiny_model_dir("llama"), tmp_path_factory.mktemp("store"))
    yield engine
    engine.cleanup()


@pytest.fixture
def scheduler(llama):
    scheduler = Scheduler(llama, max_batch_size=4, max_queue=16).start()
    yield scheduler
    scheduler.stop(drain=False)


def single(engine, prompt, adapter, **gen):
    return engine.query(prompt, adapter=spec(adapter), **GREEDY, **gen)


# -- greedy equality ---------------------------------------------------------------------------------

def test_staggered_mixed_adapter_requests_equal_single_requests(engine):
    expected = [single(engine, p, a, max_new_tokens=n) for p, a, n in zip(PROMPTS, ADAPTERS, LENGTHS)]
    by_adapter = {a: single(engine, PROMPTS[1], a, max_new_tokens=20).text for a in (None, "a1", "a2", "mix")}
    assert len(set(by_adapter.values())) == 4  # every adapter changes the answer
    scheduler = Scheduler(engine, max_batch_size=5).start()
    try:
        handles = []
        for index, (prompt, adapter, length) in enumerate(zip(PROMPTS, ADAPTERS, LENGTHS)):
            handles.append(scheduler.submit(prompt=prompt, adapter=spec(adapter), max_new_tokens=length, **GREEDY))
            time.sleep(0.004 * (index % 3))  # arrivals land at different steps of the running batch
        streams = {}
        threads = [threading.Thread(target=lambda h=h: streams.__setitem__(h.id, "".join(h.stream())))
                   for h in handles]
        for thread in threads:
            thread.start()
        results = [handle.result(timeout=120) for handle in handles]
        for thread in threads:
            thread.join(timeout=120)
    finally:
        scheduler.stop()
    for got, want, handle in zip(results, expected, handles):
        assert got.text == want.text and streams[handle.id] == want.text
        assert (got.prompt_tokens, got.completion_tokens, got.finish_reason) == \
            (want.prompt_tokens, want.completion_tokens, want.finish_reason)
        assert got.adapter_weights == want.adapter_weights
        assert handle.ttft_ms is not None and handle.ttft_ms > 0
    assert engine.busy_adapters() == set()


def test_long_rows_cross_the_sliding_window_and_chat_messages(engine):
    """Sequences longer than gemma2's 64-token window, joined by short rows; chat messages as engine.chat."""
    long_prompt = " ".join(PROMPTS)
    messages = [{"role": "user", "content": "Tell me a short story"}, {"role": "assistant", "content": "Once upon"},
                {"role": "user", "content": "Go on."}]
    want_long = single(engine, long_prompt, "a2", max_new_tokens=60, ignore_eos=True)
    want_chat = engine.chat(messages, adapter="a1", max_new_tokens=25, **GREEDY)
    assert want_long.prompt_tokens + want_long.completion_tokens > 64
    with_short = [single(engine, p, a, max_new_tokens=8) for p, a in zip(PROMPTS[:3], ADAPTERS[:3])]
    scheduler = Scheduler(engine, max_batch_size=8).start()
    try:
        long = scheduler.submit(prompt=long_prompt, adapter="a2", max_new_tokens=60, ignore_eos=True, **GREEDY)
        chat = scheduler.submit(messages=messages, adapter="a1", max_new_tokens=25, **GREEDY)
        time.sleep(0.05)
        short = [scheduler.submit(prompt=p, adapter=a, max_new_tokens=8, **GREEDY)
                 for p, a in zip(PROMPTS[:3], ADAPTERS[:3])]
        assert long.result(timeout=120).text == want_long.text
        assert chat.result(timeout=120).text == want_chat
        assert [h.result(timeout=120).text for h in short] == [w.text for w in with_short]
    finally:
        scheduler.stop()


def test_stop_strings_end_rows_like_single_requests(llama, scheduler):
    base = single(llama, PROMPTS[3], "a1", max_new_tokens=30).text
    stop = base[8:10]
    want = single(llama, PROMPTS[3], "a1", max_new_tokens=30, stop=[stop, "@@@"])
    assert want.finish_reason == "stop" and stop not in want.text
    handles = [scheduler.submit(prompt=PROMPTS[3], adapter="a1", max_new_tokens=30, stop=[stop, "@@@"], **GREEDY),
               scheduler.submit(prompt=PROMPTS[5], adapter="a2", max_new_tokens=30, **GREEDY)]
    pieces = list(handles[0].stream())
    result = handles[0].result(timeout=60)
    assert result.text == want.text == "".join(pieces) and result.finish_reason == "stop"
    assert all(stop not in piece for piece in pieces)
    assert handles[1].result(timeout=60).text == single(llama, PROMPTS[5], "a2", max_new_tokens=30).text


def test_text_tracker_holds_back_stop_prefixes_partial_characters_and_spaces():
    tracker = TextTracker(("STOP",))
    assert tracker.feed("Hello wor", False) == ("Hello", None)  # the last short word may still change
    assert tracker.feed("Hello world, ST", False) == (" world,", None)  # 'ST' could start 'STOP'
    assert tracker.feed("Hello world, ST\ufffd", False) == ("", None)
    assert tracker.feed("Hello world, STOP and more", False) == (" ", "Hello world, ")
    plain = TextTracker(())
    assert plain.feed("caf\ufffd", False) == ("caf", None)
    assert plain.feed("café", True) == ("é", "café")


# -- sampling ------------------------------------------------------------------------------------------

def test_seeded_sampling_does_not_depend_on_batch_mates(llama, scheduler):
    sampled = {"temperature": 0.9, "top_p": 0.8, "max_new_tokens": 25}
    alone = scheduler.submit(prompt=PROMPTS[1], adapter="a1", seed=7, **sampled).result(timeout=60).text
    handles = [scheduler.submit(prompt=p, adapter=a, seed=i, temperature=1.0, max_new_tokens=20)
               for i, (p, a) in enumerate(zip(PROMPTS[2:5], ["a2", None, "a1"]))]
    time.sleep(0.02)
    crowded = scheduler.submit(prompt=PROMPTS[1], adapter="a1", seed=7, **sampled)
    assert crowded.result(timeout=60).text == alone
    other_seeds = {scheduler.submit(prompt=PROMPTS[1], adapter="a1", seed=s, **sampled).result(timeout=60).text
                   for s in (8, 9, 10)}
    assert other_seeds - {alone}  # the seed matters
    greedy = single(llama, PROMPTS[1], "a1", max_new_tokens=25).text
    assert alone != greedy
    for handle in handles:
        handle.result(timeout=60)


# -- cancellation, bounds, stopping ---------------------------------------------------------------------

def test_cancelled_row_leaves_at_the_next_step_and_others_are_unaffected(llama, scheduler):
    want = [single(llama, p, a, max_new_tokens=n) for p, a, n in zip(PROMPTS[:3], ADAPTERS[:3], LENGTHS[:3])]
    doomed = scheduler.submit(prompt=PROMPTS[6], adapter="a2", max_new_tokens=400, ignore_eos=True, **GREEDY)
    others = [scheduler.submit(prompt=p, adapter=a, max_new_tokens=n, **GREEDY)
              for p, a, n in zip(PROMPTS[:3], ADAPTERS[:3], LENGTHS[:3])]
    pieces = doomed.stream()
    first = next(pieces)
    assert first and doomed.ttft_ms is not None
    doomed.cancel()
    "".join(pieces)  # the stream ends quietly at the next step
    assert doomed.cancelled and doomed.done
    with pytest.raises(RequestCancelledError):
        doomed.result(timeout=60)
    assert [h.result(timeout=60).text for h in others] == [w.text for w in want]
    deadline = time.time() + 10
    while scheduler.batch_size and time.time() < deadline:
        time.sleep(0.01)
    assert scheduler.batch_size == 0 and llama.busy_adapters() == set()


def test_closing_a_stream_cancels_and_waiting_requests_cancel_at_once(llama):
    scheduler = Scheduler(llama, max_batch_size=1, max_queue=4).start()
    try:
        running = scheduler.submit(prompt=PROMPTS[0], max_new_tokens=400, ignore_eos=True, **GREEDY)
        waiting = scheduler.submit(prompt=PROMPTS[1], adapter="a1", max_new_tokens=5, **GREEDY)
        waiting.cancel()
        with pytest.raises(RequestCancelledError):
            waiting.result(timeout=5)
        for _ in running.stream():
            break  # the client goes away: closing the stream cancels the request
        with pytest.raises(RequestCancelledError):
            running.result(timeout=60)
        after = scheduler.submit(prompt=PROMPTS[2], max_new_tokens=6, **GREEDY).result(timeout=60)
        assert after.text == single(llama, PROMPTS[2], None, max_new_tokens=6).text
    finally:
        scheduler.stop()


def test_queue_bound_and_batch_bound(llama):
    scheduler = Scheduler(llama, max_batch_size=2, max_queue=3)
    handles = [scheduler.submit(prompt=p, adapter=a, max_new_tokens=10, **GREEDY)
               for p, a in zip(PROMPTS[:3], ADAPTERS[:3])]  # not started yet: they wait
    assert scheduler.queue_depth == 3
    with pytest.raises(QueueFullError, match="max_queue=3"):
        scheduler.submit(prompt=PROMPTS[3], max_new_tokens=10)
    sizes = []
    real_batch = llama.backend.new_step_batch

    class Recording:  # records the size of the real batch after every call
        def __init__(self):
            self.inner = real_batch()

        def __getattr__(self, name):
            method = getattr(self.inner, name)

            def call(*args):
                out = method(*args)
                sizes.append(len(self.inner))
                return out
            return call

        def __len__(self):
            return len(self.inner)

    llama.backend.new_step_batch = Recording
    try:
        scheduler.start()
        results = [h.result(timeout=60).text for h in handles]
    finally:
        del llama.backend.new_step_batch
        scheduler.stop()
    assert results == [single(llama, p, a, max_new_tokens=10).text for p, a in zip(PROMPTS[:3], ADAPTERS[:3])]
    assert max(sizes) == 2 and scheduler.queue_depth == 0
    with pytest.raises(ConfigError, match="max_batch_size"):
        Scheduler(llama, max_batch_size=0)


def test_stop_drains_in_flight_requests_then_refuses_new_ones(llama):
    scheduler = Scheduler(llama, max_batch_size=2).start()
    jobs = list(zip(PROMPTS[:5], ADAPTERS[:5], LENGTHS[:5]))
    handles = [scheduler.submit(prompt=p, adapter=spec(a), max_new_tokens=n, **GREEDY) for p, a, n in jobs]
    scheduler.stop(drain=True, timeout=60)
    assert [h.result(timeout=0).text for h in handles] == [single(llama, p, a, max_new_tokens=n).text
                                                          for p, a, n in jobs]
    with pytest.raises(SchedulerStoppedError):
        scheduler.submit(prompt=PROMPTS[0])
    abrupt = Scheduler(llama, max_batch_size=1).start()
    handles = [abrupt.submit(prompt=p, max_new_tokens=300, ignore_eos=True, **GREEDY) for p in PROMPTS[:3]]
    abrupt.stop(drain=False)
    for handle in handles:
        with pytest.raises(SchedulerStoppedError):
            handle.result(timeout=0)
    assert llama.busy_adapters() == set()


# -- errors, adapters between steps, asyncio, the fallback ---------------------------------------------

def test_bad_requests_fail_at_submit_and_pin_nothing(llama, scheduler):
    with pytest.raises(InvalidGenerationParameterError, match="temperature"):
        scheduler.submit(prompt="hi", temperature=-1)
    with pytest.raises(InvalidGenerationParameterError, match="Unknown generation argument"):
        scheduler.submit(prompt="hi", colour="red")
    with pytest.raises(AdapterNotFoundError):
        scheduler.submit(prompt="hi", adapter="nope")
    with pytest.raises(InvalidPromptError, match="exactly one"):
        scheduler.submit(prompt="hi", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidPromptError):
        scheduler.submit(prompt="   ")
    with pytest.raises(ContextOverflowError):
        scheduler.submit(prompt="alpha " * 600, adapter="a1")
    assert llama.busy_adapters() == set() and scheduler.queue_depth == 0


def test_adapters_change_between_steps(tiny_model_dir, tmp_path, single_torch_thread):
    store = tmp_path / "store"
    engine = make_engine(tiny_model_dir("llama"), store, adapters={"directory": str(store), "cache_size": 1})
    try:
        engine.save_adapter("a1")
        AdapterManager(store).import_peft(store / "a1", "b1")
        scheduler = Scheduler(engine, max_batch_size=4).start()
        try:
            long = scheduler.submit(prompt=PROMPTS[1], adapter="a1", max_new_tokens=300, ignore_eos=True, **GREEDY)
            doomed = scheduler.submit(prompt=PROMPTS[2], adapter="a2", max_new_tokens=300, ignore_eos=True, **GREEDY)
            stream = long.stream()
            next(stream)  # "long" is running (the stream stays open: closing it would cancel)
            engine.load_adapter("b1")  # runs between steps; cache_size=1 must not evict the busy "a1"
            assert "a1" in engine.loaded_adapters()
            engine.unload_adapter("a2")  # a running row's adapter goes away: that row fails, the rest go on
            with pytest.raises(AdapterNotFoundError, match="unloaded while"):  # running or still waiting
                doomed.result(timeout=60)
            want = engine.query(PROMPTS[1], adapter="a1", max_new_tokens=300, ignore_eos=True, **GREEDY).text
            assert long.result(timeout=120).text == want
            stream.close()
        finally:
            scheduler.stop()
    finally:
        engine.cleanup()


def test_asyncio_stream_and_result(llama, scheduler):
    want = single(llama, PROMPTS[4], "a2", max_new_tokens=20).text

    async def main():
        handles = [scheduler.submit(prompt=PROMPTS[4], adapter="a2", max_new_tokens=20, **GREEDY) for _ in range(3)]
        pieces = [piece async for piece in handles[0].astream()]
        results = await asyncio.gather(*(h.aresult() for h in handles))
        return "".join(pieces), [r.text for r in results]

    streamed, texts = asyncio.run(main())
    assert streamed == want and texts == [want] * 3


def test_one_at_a_time_without_batching(llama):
    scheduler = Scheduler(llama, batching=False).start()
    try:
        handles = [scheduler.submit(prompt=p, adapter=spec(a), max_new_tokens=n, **GREEDY)
                   for p, a, n in zip(PROMPTS[:4], ADAPTERS[:4], LENGTHS[:4])]
        results = [h.result(timeout=60) for h in handles]
    finally:
        scheduler.stop()
    for got, (p, a, n) in zip(results, zip(PROMPTS[:4], ADAPTERS[:4], LENGTHS[:4])):
        want = single(llama, p, a, max_new_tokens=n)
        assert (got.text, got.completion_tokens, got.finish_reason) == (want.text, want.completion_tokens,
                                                                       want.finish_reason)


def test_one_token_rows_and_the_context_window(tiny_model_dir, tmp_path, single_torch_thread):
    """Rows that end at their prefill, and rows cut by a small context window, as single requests end."""
    engine = make_engine(tiny_model_dir("qwen2"), tmp_path / "store", model={"max_context": 40})
    try:
        jobs = [(PROMPTS[0], "a1", 1), (PROMPTS[5], "a2", 50), (PROMPTS[1], None, 1), (PROMPTS[3], "a1", 50)]
        want = [single(engine, p, a, max_new_tokens=n, ignore_eos=True) for p, a, n in jobs]
        assert want[1].finish_reason == "length" and want[1].prompt_tokens + want[1].completion_tokens == 40
        scheduler = Scheduler(engine).start()
        try:
            handles = [scheduler.submit(prompt=p, adapter=a, max_new_tokens=n, ignore_eos=True, **GREEDY)
                       for p, a, n in jobs]
            got = [h.result(timeout=60) for h in handles]
        finally:
            scheduler.stop()
        assert [(g.text, g.completion_tokens, g.finish_reason) for g in got] == \
            [(w.text, w.completion_tokens, w.finish_reason) for w in want]
    finally:
        engine.cleanup()


def test_rows_leaving_trim_the_shared_padding(llama):
    from adaptrix_core.protocols import StepRow

    params = llama.prompts.sampling({"temperature": 0, "max_new_tokens": 50, "ignore_eos": True})
    short = llama.prompts.sampling({"temperature": 0, "max_new_tokens": 2})
    encode = llama.backend.encode_prompt
    with llama.lock:
        batch = llama.backend.new_step_batch()
        batch.add([StepRow("long", encode(PROMPTS[5], templated=False), short),
                   StepRow("small", encode(PROMPTS[0], templated=False), params)])
        assert batch.cache.layers[0].keys.shape[2] == len(encode(PROMPTS[5], templated=False))
        batch.step()  # "long" reaches its 2 tokens and leaves: only "small"'s slots remain
        assert batch.keys() == ["small"]
        assert batch.mask.shape[1] == batch.cache.layers[0].keys.shape[2] == len(encode(PROMPTS[0], templated=False)) + 1
        assert bool(batch.mask.all())


# -- the real default model -------------------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_concurrent_demo_adapters_equal_single_requests(default_engine, monkeypatch):
    """Eight natural-length requests over the demo adapters and the base model, submitted together."""
    import json

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(default_engine, "adapter_manager", AdapterManager(repo / "adapters"))
    jobs = []
    for task in ("arithmetic", "dates", "extraction"):
        lines = (repo / "data" / "demo" / task / "test.jsonl").read_text().splitlines()[:2]
        jobs += [(json.loads(line)["prompt"], task) for line in lines]
    jobs += [("What is the capital of France?", None), ("Name two primary colors.", "dates")]
    gen = {"temperature": 0, "max_new_tokens": 48}
    expected = [default_engine.query(prompt, adapter=adapter, **gen) for prompt, adapter in jobs]
    scheduler = Scheduler(default_engine, max_batch_size=8).start()
    try:
        handles = [scheduler.submit(prompt=prompt, adapter=adapter, **gen) for prompt, adapter in jobs]
        results = [handle.result(timeout=300) for handle in handles]
    finally:
        scheduler.stop()
    assert [r.text for r in results] == [e.text for e in expected]
    assert [r.completion_tokens for r in results] == [e.completion_tokens for e in expected]
    assert len({e.completion_tokens for e in expected}) > 1  # natural lengths: rows left at different steps
