"""Qwen family: Qwen2, Qwen2-MoE, Qwen3 (thinking switch, off by default) and Qwen3-MoE."""

from adaptrix_core import hookimpl
from adaptrix_core.models.families import ChatQuirks, GenerationDefaults, ModelFamily

FAMILY = ModelFamily(
    name="qwen",
    description="Qwen2/Qwen3 dense and MoE models; MoE experts keep gate/up/down names under mlp.experts.",
    model_types=("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"),
    architectures=("Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
    id_patterns=(r"qwen",),
    chat=ChatQuirks(thinking_switch=True, end_of_turn_tokens=("<|im_end|>", "<|endoftext|>")),
    generation=GenerationDefaults(max_new_tokens=1024, temperature=0.7, top_p=0.9, max_context=32768),
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
