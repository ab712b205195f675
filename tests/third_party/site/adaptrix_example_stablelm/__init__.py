"""An example third-party Adaptrix plugin: adds a model family for StableLM.

It is registered through its own ``.dist-info/entry_points.txt`` (group ``adaptrix``), exactly as a
package installed with pip would be; the tests put its folder on ``sys.path``.
"""

from adaptrix_core import hookimpl
from adaptrix_core.families import GenerationDefaults, ModelFamily

FAMILY = ModelFamily(
    name="stablelm",
    description="Stability AI StableLM models.",
    model_types=("stablelm",),
    architectures=("StableLmForCausalLM",),
    id_patterns=(r"stablelm",),
    generation=GenerationDefaults(max_new_tokens=256, temperature=0.5, top_p=0.8, max_context=4096),
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
