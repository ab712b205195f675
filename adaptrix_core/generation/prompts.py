"""``PromptBuilder``: chat messages -> the prompt text a backend generates from, and arguments ->
``SamplingParams``, with the model family's rules (chat template quirks, defaults, presets)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adaptrix_core.config import GenerationSettings, ModelSettings
from adaptrix_core.generation.params import (
    check_generation_keys,
    fold_system_into_user,
    plain_transcript,
    resolve_sampling,
    with_system_prompt,
)
from adaptrix_core.models.loaded import LoadedModel
from adaptrix_core.types import SamplingParams


class PromptBuilder:
    """Renders conversations and resolves generation arguments for the loaded model.

    ``model`` returns the ``LoadedModel`` (loading it on first use); ``settings`` and ``generation``
    are the config's ``model`` and ``generation`` sections.
    """

    def __init__(self, settings: ModelSettings, generation: GenerationSettings, model: Callable[[], LoadedModel]):
        self.settings = settings
        self.generation = generation
        self._model = model

    @property
    def max_context(self) -> int:
        """Context window in tokens: the configured override, else min(model config, family default)."""
        if self.settings.max_context:
            return self.settings.max_context
        loaded = self._model()
        limits = [loaded.family.generation.max_context, loaded.description.max_position_embeddings]
        return min(int(limit) for limit in limits if limit)

    def uses_chat_template(self) -> bool:
        """Whether prompts are wrapped in the model's chat template (the setting, else: has one)."""
        setting = self.settings.use_chat_template
        return self._model().description.has_chat_template if setting is None else setting

    def render(self, messages: list[dict[str, str]], gen: Mapping[str, Any]) -> tuple[str, bool]:
        """(prompt text, templated): the system prompt added, the family's template quirks applied."""
        loaded = self._model()
        messages = with_system_prompt(messages, self.settings.system_prompt)
        if not self.uses_chat_template():
            return plain_transcript(messages), False
        if not loaded.family.chat.system_role:
            messages = fold_system_into_user(messages)
        template_kwargs = {}
        if loaded.family.chat.thinking_switch:
            thinking = gen.get("enable_thinking")
            template_kwargs["enable_thinking"] = self.settings.enable_thinking if thinking is None else bool(thinking)
        return loaded.backend.render_chat(messages, template_kwargs), True

    def sampling(self, gen: Mapping[str, Any], extra_keys: tuple[str, ...] = ("adapter",)) -> SamplingParams:
        """Check the keyword arguments and resolve them into ``SamplingParams``."""
        check_generation_keys(gen, extra_keys)
        return resolve_sampling(gen, self._model().family, self.generation, self.max_context)
