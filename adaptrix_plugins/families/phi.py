"""Phi family: Phi-1/2 (q/k/v, dense, fc1/fc2) and Phi-3 (fused qkv_proj and gate_up_proj)."""

from adaptrix_core import hookimpl
from adaptrix_core.models.families import ChatQuirks, GenerationDefaults, ModelFamily

FAMILY = ModelFamily(
    name="phi",
    description="Microsoft Phi models; Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj.",
    model_types=("phi", "phi3"),
    architectures=("PhiForCausalLM", "Phi3ForCausalLM"),
    id_patterns=(r"\bphi",),
    attention_modules=("qkv_proj", "o_proj", "q_proj", "k_proj", "v_proj", "dense"),
    mlp_modules=("gate_up_proj", "down_proj", "fc1", "fc2"),
    default_target_modules=("qkv_proj", "q_proj", "v_proj"),
    chat=ChatQuirks(end_of_turn_tokens=("<|end|>", "<|endoftext|>")),
    generation=GenerationDefaults(max_new_tokens=512, temperature=0.7, top_p=0.85, max_context=2048),
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
