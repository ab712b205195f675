"""Generic fallback for any other HF causal LM (GPT-2 with its Conv1D layers included).

The block list is found at load time (``layers_path=None``); projection names cover the common
conventions, and only those present in the model are targeted.
"""

from adaptrix_core import hookimpl
from adaptrix_core.models.families import GENERIC_FAMILY_NAME, GenerationDefaults, ModelFamily

FAMILY = ModelFamily(
    name=GENERIC_FAMILY_NAME,
    description="Any other causal LM: layers discovered at load time, common projection names.",
    layers_path=None,
    attention_modules=("q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "c_proj", "query_key_value",
                       "qkv_proj", "Wqkv", "out_proj", "dense"),
    mlp_modules=("gate_proj", "up_proj", "down_proj", "c_fc", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h"),
    default_target_modules=("q_proj", "v_proj", "c_attn", "query_key_value", "qkv_proj", "Wqkv"),
    generation=GenerationDefaults(max_new_tokens=512, temperature=0.7, top_p=0.9, max_context=2048),
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
