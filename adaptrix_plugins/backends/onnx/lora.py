"""LoRA on the ONNX graph: slot inputs in the graph, PEFT adapters as ``.onnx_adapter`` files, mixes.

A *slot* is one projection of one block (``model.layers.12.self_attn.q_proj``) whose LoRA matrices
are graph inputs: ``<module>.lora_A`` of shape ``[in, r]`` and ``<module>.lora_B`` of shape
``[r, out]`` with a symbolic rank ``r``. Their defaults are empty (``r = 0``), so without an adapter
the graph computes the base model. The update ``x @ A @ B`` is added to the projection's output.

A PEFT adapter becomes one set of those inputs: A transposed, and B transposed and multiplied by
its scale (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA), written once with
``onnxruntime.AdapterFormat`` into the cache (never into the adapter folder). A weighted mix
concatenates the parts' ranks, each part's B multiplied by its weight: the same update as peft's
``add_weighted_adapter(..., combination_type="cat")``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptrix_core.adapters.metadata import sha256_of
from adaptrix_core.adapters.store import read_safetensors_header
from adaptrix_core.errors import AdapterCorruptError, AdapterIncompatibleError, ModelLoadError

CONVERT_FORMAT = 1  # bump when the conversion changes, so cached adapter files are redone
_SLOT = re.compile(r"(?P<prefix>.+)\.layers\.(?P<index>\d+)\.(?P<rest>.+)")
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


# -- the graph ---------------------------------------------------------------------------------------
def graph_output(module: str) -> str:
    """Name of the tensor the ONNX model builder gives the output of projection ``module``.

    ``model.layers.12.self_attn.q_proj`` -> ``/model/layers.12/attn/q_proj/MatMul/output_0``; the
    same name whether the MatMul is fp32 or a quantized MatMulNBits.
    """
    match = _SLOT.fullmatch(module)
    if match is None:
        raise ModelLoadError(f"LoRA slot {module!r} is not a projection inside a transformer block.")
    rest = re.sub(r"^self_attn\.", "attn.", match["rest"]).replace(".", "/")
    return f"/{match['prefix'].replace('.', '/')}/layers.{match['index']}/{rest}/MatMul/output_0"


def input_names(module: str) -> tuple[str, str]:
    """Graph input names of the A and B matrices of slot ``module``."""
    return f"{module}.lora_A", f"{module}.lora_B"


def add_lora_inputs(model_file: Path, slots: Sequence[str], shapes: Mapping[str, tuple[int, int]]) -> None:
    """Give every slot LoRA inputs with empty defaults, editing ``model_file`` (weights stay external).

    Raises ``ModelLoadError`` when the graph has no projection for a slot (the builder fused it).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, position))
    extra: dict[int, list[Any]] = {}
    for module in slots:
        output = graph_output(module)
        node = producers.get(output)
        if node is None:
            raise ModelLoadError(f"The built ONNX graph has no separate projection for LoRA slot {module!r} "
                                 f"(no tensor {output!r}); choose other slots in plugins.onnx.lora_modules.")
        fan_in, fan_out = shapes[module]
        a_name, b_name = input_names(module)
        rank = f"lora_r.{module}"
        graph.input.append(helper.make_tensor_value_info(a_name, TensorProto.FLOAT, [fan_in, rank]))
        graph.input.append(helper.make_tensor_value_info(b_name, TensorProto.FLOAT, [rank, fan_out]))
        graph.initializer.append(numpy_helper.from_array(np.zeros((fan_in, 0), np.float32), a_name))
        graph.initializer.append(numpy_helper.from_array(np.zeros((0, fan_out), np.float32), b_name))
        prefix = output.removesuffix("/MatMul/output_0") + "/lora"
        summed = f"{prefix}/Add/output_0"
        for consumer, position in consumers.get(output, []):
            consumer.input[position] = summed
        extra[id(node)] = [
            helper.make_node("MatMul", [node.input[0], a_name], [f"{prefix}/A/output_0"], name=f"{prefix}/A"),
            helper.make_node("MatMul", [f"{prefix}/A/output_0", b_name], [f"{prefix}/B/output_0"], name=f"{prefix}/B"),
            helper.make_node("Add", [output, f"{prefix}/B/output_0"], [summed], name=f"{prefix}/Add"),
        ]
    ordered = []  # each LoRA branch right after its projection keeps the node list topologically sorted
    for node in graph.node:
        ordered.append(node)
        ordered.extend(extra.get(id(node), []))
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save(model, str(model_file))


def describe_slots(slots: Iterable[str]) -> str:
    """``q_proj, v_proj in blocks 10-19`` style summary of a slot set (for messages)."""
    by_leaf: dict[str, set[int]] = {}
    for module in slots:
        match = _SLOT.fullmatch(module)
        if match:
            by_leaf.setdefault(match["rest"].rsplit(".", 1)[-1], set()).add(int(match["index"]))
    if not by_leaf:
        return "none"
    groups: dict[tuple[int, ...], list[str]] = {}
    for leaf, blocks in sorted(by_leaf.items()):
        groups.setdefault(tuple(sorted(blocks)), []).append(leaf)
    return "; ".join(f"{', '.join(leaves)} in blocks {_ranges(blocks)}" for blocks, leaves in groups.items())


def _ranges(values: Sequence[int]) -> str:
    parts, start = [], None
    for position, value in enumerate(values):
        if start is None:
            start = value
        if position + 1 == len(values) or values[position + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


# -- PEFT adapters -----------------------------------------------------------------------------------
def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 numpy arrays (F32, F16, BF16, F64; no pickle)."""
    header = read_safetensors_header(path)
    with open(path, "rb") as handle:
        (header_length,) = np.frombuffer(handle.read(8), dtype="<u8")
        data = handle.read()[int(header_length):]
    tensors = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        raw, dtype = data[start:end], entry.get("dtype")
        if dtype == "BF16":
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _NUMPY_DTYPES:
            array = np.frombuffer(raw, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise AdapterCorruptError(f"{path.name}: tensor {name!r} has dtype {dtype}, not a float type.")
        shape = entry.get("shape") or []
        if array.size != math.prod(shape):
            raise AdapterCorruptError(f"{path.name}: tensor {name!r} holds {array.size} values, its shape says {shape}.")
        tensors[name] = array.reshape(shape).astype(np.float32)
    return tensors


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: the first key matching the end of ``module``."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?({key})", module):
            return value
    return default


def unsupported_features(config: Mapping[str, Any]) -> list[str]:
    """Parts of a PEFT LoRA config the ONNX graph cannot apply (DoRA, trained biases, saved modules)."""
    problems = []
    if config.get("use_dora"):
        problems.append("It is a DoRA adapter (use_dora), which the onnx backend cannot apply; serve it with backend='hf'.")
    if config.get("lora_bias") or config.get("bias", "none") not in (None, "none"):
        problems.append("It trains biases (bias/lora_bias), which the onnx backend cannot apply; serve it with backend='hf'.")
    if config.get("modules_to_save") or config.get("trainable_token_indices"):
        problems.append("It replaces whole modules or embeddings (modules_to_save), which the onnx backend cannot "
                        "apply; serve it with backend='hf'.")
    if config.get("fan_in_fan_out"):
        problems.append("It was made for Conv1D layers (fan_in_fan_out), which the onnx backend does not build.")
    return problems


def peft_to_params(name: str, config: Mapping[str, Any], weights_file: Path) -> dict[str, np.ndarray]:
    """Graph inputs of a PEFT LoRA adapter: A transposed, B transposed times the module's scale."""
    problems = unsupported_features(config)
    if problems:
        raise AdapterIncompatibleError(name, problems)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in read_tensors(weights_file).items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise AdapterIncompatibleError(name, [f"Its tensor {key!r} is not a LoRA A/B matrix the onnx backend can apply."])
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    params: dict[str, np.ndarray] = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterCorruptError(f"Adapter {name!r}: module {module!r} lacks its lora_A or lora_B weights.")
        a, b = pair["lora_A"], pair["lora_B"]  # peft: A [r, in], B [out, r]
        rank = a.shape[0]
        alpha = float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank)))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        a_name, b_name = input_names(module)
        params[a_name] = np.ascontiguousarray(a.T)
        params[b_name] = np.ascontiguousarray((b * scale).T)
    return params


def param_modules(params: Mapping[str, np.ndarray]) -> set[str]:
    """The slot modules a set of graph inputs addresses."""
    return {key.rsplit(".", 1)[0] for key in params}


def check_slots(name: str, params: Mapping[str, np.ndarray], slots: Sequence[str]) -> None:
    """Refuse an adapter that targets projections without LoRA inputs in the built graph."""
    outside = sorted(param_modules(params) - set(slots))
    if outside:
        raise AdapterIncompatibleError(name, [
            f"It targets {len(outside)} layer(s) outside the LoRA slots of the built ONNX graph "
            f"(e.g. {outside[0]!r}; the graph has slots for {describe_slots(slots)}). Rebuild with slots that "
            "cover it: put the adapter in the store and run `adaptrix export onnx` (the slots follow the store), "
            "or set plugins.onnx.lora_modules and plugins.onnx.lora_layers."
        ])


def compose_params(parts: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """The weighted sum of several adapters' updates, as one set of inputs (ranks concatenated)."""
    modules = sorted(set().union(*(param_modules(params) for params, _ in parts)))
    mixed = {}
    for module in modules:
        a_name, b_name = input_names(module)
        present = [(params, weight) for params, weight in parts if a_name in params]
        mixed[a_name] = np.ascontiguousarray(np.concatenate([params[a_name] for params, _ in present], axis=1))
        mixed[b_name] = np.ascontiguousarray(np.concatenate([params[b_name] * weight for params, weight in present],
                                                            axis=0).astype(np.float32))
    return mixed


# -- adapter files ----------------------------------------------------------------------------------
def conversion_key(config: Mapping[str, Any], weights_file: Path) -> str:
    """Identifies a conversion: the weights' sha256 and every config field that changes the scale."""
    fields = {k: config.get(k) for k in ("lora_alpha", "alpha_pattern", "use_rslora")}
    payload = json.dumps([sha256_of(weights_file), fields, CONVERT_FORMAT], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def mix_key(parts: Sequence[tuple[str, float]]) -> str:
    """Identifies a weighted mix of converted adapters (their keys and weights)."""
    payload = json.dumps(sorted([key, repr(float(weight))] for key, weight in parts) + [CONVERT_FORMAT])
    return "mix-" + hashlib.sha256(payload.encode()).hexdigest()[:24]


def write_adapter_file(params: Mapping[str, np.ndarray], path: Path) -> None:
    """Write ``params`` as an ``.onnx_adapter`` file through a temporary file renamed into place."""
    import onnxruntime as ort

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        values = {key: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, dtype=np.float32))
                  for key, value in params.items()}
        adapter = ort.AdapterFormat()
        adapter.set_adapter_version(CONVERT_FORMAT)
        adapter.set_model_version(1)
        adapter.set_parameters(values)
        adapter.export_adapter(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_adapter_file(path: Path) -> dict[str, np.ndarray] | None:
    """The parameters of a cached ``.onnx_adapter`` file, or None when it is missing or unreadable."""
    import onnxruntime as ort

    if not path.is_file():
        return None
    try:
        adapter = ort.AdapterFormat.read_adapter(str(path))
        return {key: np.array(value.numpy(), dtype=np.float32) for key, value in adapter.get_parameters().items()}
    except Exception:  # a damaged cache file is converted again
        return None
