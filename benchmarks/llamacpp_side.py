"""The llama.cpp side of ``bench_onnx.py``: the same prompt and adapter on llama.cpp (llama-cpp-python).

Optional: llama-cpp-python is not part of the default install (it compiles llama.cpp for about
5 minutes); ``scripts/install_llamacpp.sh`` builds it into the project's virtualenv and keeps its
source in ``.llamacpp/``, whose ``convert_lora_to_gguf.py`` turns the PEFT adapter into a GGUF LoRA.

The worker runs in its own process like the other sides. It takes the prompt's token ids from an
Adaptrix engine (the same chat template and tokenizer as the other sides), then frees that engine
and serves ``speed`` requests with two ``Llama`` instances on the default model's GGUF file
(SmolLM2-135M-Instruct, Q4_1): one plain, one with the LoRA applied (``lora_path``). Decoding is
greedy (top_k 1) and runs exactly N tokens (an end token does not stop it, like ``ignore_eos``).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness

REPO = harness.REPO_ROOT
SOURCE_GLOB = str(REPO / ".llamacpp" / "llama_cpp_python-*" / "vendor" / "llama.cpp")
INSTALL_HINT = "run scripts/install_llamacpp.sh first (it builds llama-cpp-python, about 5 minutes)"


def llama_source() -> Path:
    """The llama.cpp source folder kept by scripts/install_llamacpp.sh (for convert_lora_to_gguf.py)."""
    found = sorted(glob.glob(SOURCE_GLOB))
    if not found or not (Path(found[-1]) / "convert_lora_to_gguf.py").is_file():
        raise SystemExit(f"llama.cpp side: no llama.cpp source under .llamacpp/; {INSTALL_HINT}")
    return Path(found[-1])


def prepare(prompt: str, adapter: str) -> tuple[list[int], Path, Path]:
    """(prompt token ids, the GGUF model file, the adapter as a GGUF LoRA), converting it once into the cache."""
    from adaptrix_core import ModularAdaptrixEngine
    from adaptrix_core.models.source import default_model_source

    engine = ModularAdaptrixEngine().initialize()
    try:
        prepared = engine.prepare_request(prompt=prompt, temperature=0)
        ids = engine.backend.encode_prompt(prepared.prompt, templated=prepared.templated)
        engine.release_request(prepared)
        folder = Path(engine.get_model_info()["weights_path"])
        cache = engine.config.resolved_cache_dir() / "bench-llamacpp"
    finally:
        engine.cleanup()
    source = default_model_source()
    lora = cache / f"{adapter}-f32.gguf"
    if not lora.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        script = llama_source() / "convert_lora_to_gguf.py"
        subprocess.run([sys.executable, str(script), "--base", str(folder), "--outtype", "f32", "--outfile", str(lora),
                        str(REPO / "adapters" / adapter)], check=True, stdout=sys.stderr)
    return ids, source.path / source.gguf_file, lora


def speed(llm: Any, ids: list[int], tokens: int) -> dict[str, Any]:
    """Time to first token and decode rate of ``tokens`` greedy tokens after ``ids`` (no prefix cache reuse)."""
    stamps: list[float] = []
    with harness.ContentionMeter() as meter:
        llm.reset()
        started = time.perf_counter()
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == tokens:
                break
    decode_s = stamps[-1] - stamps[0]
    return {"ttft_ms": (stamps[0] - started) * 1000, "total_ms": (stamps[-1] - started) * 1000, "tokens": len(stamps),
            "decode_tok_s": (len(stamps) - 1) / decode_s if decode_s > 0 else float("nan"),
            "other_processes_cores": meter.other_cores, "prompt_tokens": len(ids)}


def worker(prompt: str, adapter: str, threads: int | None) -> None:
    """Serve ``speed`` requests on stdin, one JSON reply per line on the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    started = time.perf_counter()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit(f"llama.cpp side: llama-cpp-python is not installed; {INSTALL_HINT}") from None
    ids, model_file, lora = prepare(prompt, adapter)
    count = threads or os.cpu_count() or 1
    options = {"n_ctx": 1024, "n_threads": count, "n_threads_batch": count, "verbose": False}
    models = {None: llama_cpp.Llama(model_path=str(model_file), **options),
              adapter: llama_cpp.Llama(model_path=str(model_file), lora_path=str(lora), **options)}
    for llm in models.values():
        speed(llm, ids, 4)  # warm-up
    out.write(json.dumps({"ready": round(time.perf_counter() - started, 1), "precision": "gguf Q4_1",
                          "adapter_precision": "f32 LoRA", "llama_cpp_python": llama_cpp.__version__,
                          "model_file": model_file.name}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "speed":
            reply = speed(models[request["adapter"]], ids, request["tokens"])
        elif request["op"] in ("switch", "accuracy"):
            reply = {"skipped": f"{request['op']} is not measured on the llama.cpp side"}
        else:
            break
        out.write(json.dumps(reply) + "\n")
