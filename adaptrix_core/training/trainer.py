"""``Trainer``: training an adapter on the user's data and scoring it against the base model on
held-out examples. It trains on the served model through the adapter pool, so it needs a backend
with the ``training`` capability."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from adaptrix_core.adapters.metadata import AdapterMetadata, RoutingHints, check_adapter_name
from adaptrix_core.capabilities import require_capability
from adaptrix_core.errors import AdapterExistsError, TrainingDataError
from adaptrix_core.protocols import Capability
from adaptrix_core.training.data import Example, load_examples, split_examples
from adaptrix_core.training.metrics import metric_for

Progress = Callable[[int, int, float], None]


class Trainer:
    """Trains and evaluates adapters on the served model.

    ``pool`` is the engine's ``AdapterPool`` (adapters are created, chosen and saved there),
    ``prompts`` its ``PromptBuilder``, ``model`` returns the ``LoadedModel``; ``lock`` is the engine's.
    """

    def __init__(self, pool: Any, prompts: Any, model: Callable[[], Any], lock: Any):
        self.pool = pool
        self.prompts = prompts
        self._model = model
        self._lock = lock
        self.adapter_manager = pool.adapter_manager

    def evaluate(self, data: Any, adapter: Any = None, metric: str = "auto", batch_size: int = 16,
                 max_new_tokens: int | None = None) -> dict[str, Any]:
        """Score greedy answers on examples (JSONL path, dicts or ``Example`` objects) against their references.

        Returns the metric name, its value in [0, 1], the number of examples and the predictions.
        """
        examples = data if _are_examples(data) else load_examples(data)
        references = [example.response for example in examples]
        metric_name, score = metric_for(metric, references)
        with self._lock:
            backend = self._model().backend
            budget = max_new_tokens or max(backend.count_tokens(r) for r in references) + 8
            predictions: list[str] = []
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                prompts = [self.prompts.render(example.chat(), {})[0] for example in chunk]
                predictions.extend(self._generate_rendered(prompts, adapter, budget))
        hits = [score(p, r) for p, r in zip(predictions, references)]
        return {"metric": metric_name, "score": sum(hits) / len(hits), "examples": len(hits),
                "predictions": predictions, "correct": hits}

    def _generate_rendered(self, prompts: Sequence[str], adapter: Any, max_new_tokens: int) -> list[str]:
        params = self.prompts.sampling({"temperature": 0, "max_new_tokens": max_new_tokens})
        target = self.pool._choose(adapter).target
        completions = self._model().backend.generate(prompts, params, templated=self.prompts.uses_chat_template(),
                                             adapters=[target] * len(prompts))
        return [completion.text for completion in completions]

    def train_adapter(
        self, name: str, data: Any, layers: Any = "middle", rank: int = 16, alpha: float = 32,
        dropout: float = 0.05, target_modules: Sequence[str] | None = None, epochs: int = 3,
        learning_rate: float = 2e-4, batch_size: int = 8, max_length: int = 512, eval_split: float = 0.1,
        eval_data: Any = None, seed: int = 0, metric: str = "auto", description: str = "",
        keywords: Iterable[str] | None = None, example_prompts: Iterable[str] | None = None,
        overwrite: bool = False, progress: Progress | None = None,
    ) -> AdapterMetadata:
        """Train a LoRA adapter on ``data`` (JSONL of prompt/response or messages) and save it to the store.

        The chat template is applied to each prompt and the loss counts only the response. Held-out
        examples (``eval_data``, else an ``eval_split`` share of ``data``) are answered greedily by the
        base model and by the adapter; both scores go into ``performance_metrics``.
        """
        check_adapter_name(name)
        if self.adapter_manager.path(name).exists() and not overwrite:
            raise AdapterExistsError(f"Adapter {name!r} already exists in the store; pass overwrite=True to retrain it.")
        if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch_size, int) or batch_size < 1:
            raise TrainingDataError("epochs and batch_size must be positive integers.")
        if not learning_rate > 0:
            raise TrainingDataError(f"learning_rate must be positive, got {learning_rate}.")
        examples = load_examples(data)
        if eval_data is not None:
            train, held_out = examples, load_examples(eval_data)
        else:
            train, held_out = split_examples(examples, eval_split, seed)
        with self._lock:
            backend = self._model().backend
            require_capability(backend, Capability.TRAINING, "Train adapters with backend='hf'.")
            if self.pool.is_loaded(name):
                self.pool.unload_adapter(name)
            import torch  # training is the torch backend's capability (checked above)

            with torch.random.fork_rng(devices=[]):  # the seed fixes the LoRA init too; the caller's RNG state is kept
                torch.manual_seed(seed)
                self.pool.create_adapter(name, layers=layers, target_modules=target_modules, rank=rank, alpha=alpha,
                                         dropout=dropout)
            try:
                pairs = [(self.prompts.render(example.chat(), {})[0], example.response) for example in train]
                options = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
                           "max_length": max_length, "seed": seed}
                figures = backend.train_lora(name, pairs, options, progress)
                metrics: dict[str, Any] = {"train_examples": figures["train_examples"],
                                           "final_train_loss": figures["final_loss"]}
                if held_out:
                    adapted = self.evaluate(held_out, adapter=name, metric=metric)
                    base = self.evaluate(held_out, adapter=None, metric=metric)
                    metrics.update({"metric": adapted["metric"], "eval_examples": adapted["examples"],
                                    adapted["metric"]: adapted["score"], f"base_{adapted['metric']}": base["score"]})
                hints = RoutingHints(keywords=list(keywords or []),
                                     example_prompts=list(example_prompts or routing_examples(train, seed)))
                training = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed,
                            "steps": figures["steps"], "layers": layers if isinstance(layers, str) else "custom",
                            "data": str(data) if isinstance(data, (str, os.PathLike)) else "in-memory"}
                return self.pool.save_adapter(name, overwrite=overwrite, description=description, performance_metrics=metrics,
                                         routing=hints, training=training)
            except BaseException:
                self.pool.discard_unsaved(name)
                raise


ROUTING_EXAMPLES = 50


def routing_examples(examples: Sequence[Example], seed: int = 0, count: int = ROUTING_EXAMPLES) -> list[str]:
    """A seeded sample of distinct training prompts, stored as the adapter's routing examples."""
    prompts = list(dict.fromkeys(example.prompt for example in examples))
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


def _are_examples(data: Any) -> bool:
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(e, Example) for e in data)

