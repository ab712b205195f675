"""Llama family: Llama 2/3, Mistral and SmolLM (the default model)."""

from adaptrix_core import hookimpl
from adaptrix_core.models.families import ChatQuirks, GenerationDefaults, ModelFamily

FAMILY = ModelFamily(
    name="llama",
    description="Llama, Mistral and SmolLM decoder models (separate q/k/v/o and gate/up/down projections).",
    model_types=("llama", "mistral"),
    architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    id_patterns=(r"llama", r"mistral", r"smollm"),
    chat=ChatQuirks(end_of_turn_tokens=("<|eot_id|>", "<|im_end|>", "<|end_of_text|>")),
    generation=GenerationDefaults(max_new_tokens=512, temperature=0.7, top_p=0.9, max_context=8192),
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
