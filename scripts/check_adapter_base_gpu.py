"""Device check for adapter safety: run from the repository root on a machine with a CUDA GPU.

    HF_HUB_OFFLINE=1 python scripts/check_adapter_base_gpu.py

Checks that the base-model fingerprint of the tiny llama is the same on the CPU in float32 and on
the GPU in bfloat16 and float32 (float16 is reported), and that on the GPU the base model stays bit
for bit as fresh after loads, compositions, mixed batches, refused and half-done loads, and that a
composition at the weight bound samples finite logits. Without a GPU it runs the same on the CPU.
"""

import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.simplefilter("ignore")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ADAPTRIX_LOAD_PLUGINS"] = "family_llama,family_generic,backend_hf"

import torch  # noqa: E402
from peft_helpers import GREEDY, assert_base_intact, make_peft_adapter, snapshot  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402

import adaptrix_core  # noqa: E402
from adaptrix_core import ModularAdaptrixEngine  # noqa: E402
from adaptrix_core.adapters.store import AdapterManager  # noqa: E402
from adaptrix_core.errors import AdapterIncompatibleError, InvalidGenerationParameterError  # noqa: E402

GPU = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of this script
print("adaptrix from", adaptrix_core.__file__, "torch", torch.__version__, GPU)
root = Path(tempfile.mkdtemp())
model = build_tiny_model("llama", root / "tiny-llama")
prints = {}
for device, dtype in (("cpu", "float32"), (GPU, "bfloat16"), (GPU, "float32"), (GPU, "float16")):
    with ModularAdaptrixEngine(str(model), device=device, adapters_dir=str(root / "s0"),
                               config={"model": {"dtype": dtype}}) as engine:
        prints[(device, dtype)] = engine.backend.fingerprint()
        print(device, dtype, engine.get_model_info()["dtype"], prints[(device, dtype)]["weights_sha256"][:16])
reference = prints[("cpu", "float32")]
assert prints[(GPU, "bfloat16")] == reference, "bf16 on cuda differs from fp32 on cpu"
assert prints[(GPU, "float32")] == reference
print("float16 equal:", prints[(GPU, "float16")] == reference)

plain = make_peft_adapter(model, root / "plain", seed=0)
other = make_peft_adapter(model, root / "other", seed=1, r=2, use_rslora=True, target_modules=["q_proj", "k_proj", "o_proj"])
third = make_peft_adapter(model, root / "third", seed=2)
poisoned = Path(shutil.copytree(plain, root / "poisoned"))
state = load_file(str(poisoned / "adapter_model.safetensors"))
state["base_model.model.model.norm.weight"] = torch.zeros(32)
save_file(state, str(poisoned / "adapter_model.safetensors"))
store = root / "store"
with ModularAdaptrixEngine(str(model), device=GPU, config={"adapters": {"directory": str(store), "cache_size": 2}}) as engine:
    fresh = snapshot(engine)
    engine.import_adapter(plain, "plain")
    engine.import_adapter(other, "other")
    engine.import_adapter(third, "third")
    AdapterManager(store).import_peft(poisoned, "poisoned")
    from peft.tuners.lora.layer import LoraLayer

    original = LoraLayer.update_layer
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("simulated failure inside peft")
        return original(self, *args, **kwargs)

    def fail_mid(name):
        calls["n"] = 0
        LoraLayer.update_layer = failing
        try:
            engine.load_adapter(name)
            raise AssertionError("should have failed")
        except AdapterIncompatibleError:
            pass
        finally:
            LoraLayer.update_layer = original

    def refused(call, error):
        try:
            call()
        except error:
            return
        raise AssertionError("not refused")

    steps = [
        ("fail first", lambda: fail_mid("plain")),
        ("load", lambda: engine.load_adapter("plain")),
        ("compose", lambda: engine.generate("hello", adapter={"plain": 0.5, "other": -0.5}, **GREEDY)),
        ("batch", lambda: engine.generate_batch(["a", "b", "c"], adapters=["plain", None, {"plain": 1, "other": 1}], **GREEDY)),
        ("fail beside", lambda: fail_mid("third")),
        ("poisoned", lambda: refused(lambda: engine.load_adapter("poisoned"), AdapterIncompatibleError)),
        ("bound", lambda: refused(lambda: engine.generate("x", adapter={"plain": 1e30}), InvalidGenerationParameterError)),
        ("at bound sampled", lambda: engine.generate("hello", adapter={"plain": 10, "other": -10}, temperature=1.0, seed=1, max_new_tokens=16)),
        ("unload", lambda: [engine.unload_adapter(n) for n in engine.loaded_adapters()]),
    ]
    for label, step in steps:
        started = time.perf_counter()
        step()
        assert_base_intact(engine, fresh)
        print(f"ok: {label} ({(time.perf_counter() - started) * 1000:.0f} ms)")
    with torch.inference_mode():
        engine.load_adapter("plain")
        lora = engine.backend.lora
        engine.generate("x", adapter={"plain": 10.0, "other": -10.0}, **GREEDY)
        ids = engine.backend.tokenizer("hello there", return_tensors="pt").input_ids.to(engine.backend.device)
        with lora.activated(["mix(other=-10,plain=10)"]) as (m, _):
            logits = m(input_ids=ids).logits
        print("logits finite at |w| = 10 in", logits.dtype, bool(torch.isfinite(logits).all()), float(logits.abs().max()))
print("GPU CHECK PASSED")
