"""An example third-party Adaptrix plugin: a model family, a router and a CLI command.

It is registered through its own ``.dist-info/entry_points.txt`` (group ``adaptrix``), exactly as a
package installed with pip would be; the tests put its folder on ``sys.path``. It imports only
``adaptrix_core.plugin``, the module written for plugin authors.
"""

import click

from adaptrix_core.plugin import GenerationDefaults, ModelFamily, RoutingDecision, hookimpl

FAMILY = ModelFamily(
    name="stablelm",
    description="Stability AI StableLM models.",
    model_types=("stablelm",),
    architectures=("StableLmForCausalLM",),
    id_patterns=(r"stablelm",),
    generation=GenerationDefaults(max_new_tokens=256, temperature=0.5, top_p=0.8, max_context=4096),
)


class MentionRouter:
    """Selects the adapters whose name the prompt mentions (``@name``), in equal parts."""

    name = "mention"

    def __init__(self, settings, resources):
        self.settings = settings

    def route(self, prompt, candidates):
        scores = {card.name: float(f"@{card.name}" in prompt) for card in candidates}
        chosen = [name for name, score in scores.items() if score][: self.settings.top_k]
        weights = {name: round(1 / len(chosen), 4) for name in chosen}
        return RoutingDecision(weights, scores, 1.0, self.name, "mentioned" if chosen else "no mention")


@hookimpl
def register_model_families(register):
    register(FAMILY)


@hookimpl
def register_routers(register):
    register("mention", MentionRouter)


@hookimpl
def register_commands(cli):
    @cli.command(name="stablelm-info")
    def stablelm_info():
        """Show the StableLM family this plugin adds."""
        click.echo(f"{FAMILY.name}: {FAMILY.description} (context {FAMILY.generation.max_context})")
