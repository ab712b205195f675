"""Supervised LoRA training on (rendered prompt, response) pairs; the loss counts response tokens only."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

IGNORE = -100


def _encode(backend: Any, examples: Sequence[tuple[str, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
    tokenizer = backend.tokenizer
    end = backend.eos_token_ids[0] if backend.eos_token_ids else tokenizer.eos_token_id
    encoded = []
    for prompt, response in examples:
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        response_ids = tokenizer(response, add_special_tokens=False).input_ids + [end]
        ids = (prompt_ids + response_ids)[-max_length:]
        labels = ([IGNORE] * len(prompt_ids) + response_ids)[-max_length:]
        if any(label != IGNORE for label in labels):
            encoded.append((ids, labels))
    return encoded


def _batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def train_lora(backend: Any, name: str, examples: Sequence[tuple[str, str]], options: Mapping[str, Any],
               progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """AdamW on adapter ``name``'s LoRA weights, linear warm-up then linear decay, gradient clipping.

    ``options``: epochs, learning_rate, batch_size, max_length, seed. ``progress(step, total, loss)``
    is called after every optimiser step.
    """
    epochs, batch_size = int(options["epochs"]), int(options["batch_size"])
    seed = int(options["seed"])
    torch.manual_seed(seed)
    rows = _encode(backend, examples, int(options["max_length"]))
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, total // 20)
    lora = backend.lora
    lora.settle()
    model = lora.peft
    model.set_adapter(lora.internal(name))
    parameters = lora.parameters(name)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=float(options["learning_rate"]), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    pad_id = backend.tokenizer.pad_token_id
    shuffler = random.Random(seed)
    losses: list[float] = []
    step = 0
    model.train()
    try:
        for _ in range(epochs):
            order = list(range(len(rows)))
            shuffler.shuffle(order)
            for start in range(0, len(order), batch_size):
                batch = _batch([rows[i] for i in order[start : start + batch_size]], pad_id, backend.device)
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                step += 1
                if progress is not None:
                    progress(step, total, losses[-1])
    finally:
        model.eval()
        for parameter in parameters:
            parameter.requires_grad_(False)
    tail = losses[-max(1, steps_per_epoch):]
    return {"steps": step, "train_examples": len(rows), "first_loss": losses[0] if losses else None,
            "final_loss": sum(tail) / len(tail) if tail else None}
