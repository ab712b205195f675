"""Gemma family: Gemma, Gemma 2 and Gemma 3 text models (no system role in the chat template)."""

from adaptrix_core import hookimpl
from adaptrix_core.models.families import ChatQuirks, GenerationDefaults, ModelFamily

FAMILY = ModelFamily(
    name="gemma",
    description="Google Gemma 1/2/3 text decoders; the chat template has no system role.",
    model_types=("gemma", "gemma2", "gemma3_text"),
    architectures=("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"),
    id_patterns=(r"gemma",),
    chat=ChatQuirks(system_role=False, end_of_turn_tokens=("<end_of_turn>",)),
    generation=GenerationDefaults(max_new_tokens=512, temperature=0.7, top_p=0.95, max_context=8192),
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
