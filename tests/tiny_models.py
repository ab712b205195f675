"""Tiny random-weight Hugging Face causal LMs, one per supported architecture, built in milliseconds.

``build_tiny_model(kind, folder)`` writes a loadable model folder (``config.json``, safetensors
weights, ``generation_config.json`` and a fast tokenizer with a chat template) for ``kind`` in
``KINDS``. The models have 2 layers, hidden size 32, and a byte-level BPE vocabulary trained (once
per process) on the sentences below, so they load through ``AutoModelForCausalLM`` /
``AutoTokenizer`` exactly as a real checkpoint does, without any network access.

Each kind mimics the chat conventions of the real family:

* ChatML (``<|im_start|>role ... <|im_end|>``) for Llama/SmolLM, Mistral, Qwen2/3 (+MoE), Phi-1/2,
  GPT-2 and StableLM; Qwen3's template honours ``enable_thinking`` like the real one (an empty
  ``<think>`` block is appended to the generation prompt when it is false).
* Phi-3: ``<|system|>`` / ``<|user|>`` / ``<|assistant|>`` turns closed by ``<|end|>``.
* Gemma 1/2/3: ``<start_of_turn>user|model ... <end_of_turn>``; a system message raises, as in the
  real templates.

Every tokenizer shares one vocabulary that contains every family's special and end-of-turn tokens,
so ``config.vocab_size == len(tokenizer)`` for all kinds. The vocabulary holds only the ASCII
characters seen in training (no byte fallback), so any generated token sequence decodes to valid
text and streamed pieces always join up to the full decode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

KINDS = (
    "llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3",
    "gemma", "gemma2", "gemma3_text", "gpt2", "stablelm",
)

HIDDEN = 32
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
LAYERS = 2
INTERMEDIATE = 64
#: Position limit of most tiny models: below every family's ``max_context``, so the model's limit wins.
SMALL_CONTEXT = 512
#: Position limit of the Phi and generic kinds: above their families' 2048, so the family's limit wins.
LARGE_CONTEXT = 4096
#: Larger than the HF default (0.02) so that greedy decoding has clear winners: batched (padded) and
#: single-prompt runs then pick the same tokens despite float rounding differences.
INITIALIZER_RANGE = 0.2
#: ``max_position_embeddings`` of each kind's config.
MAX_POSITIONS = {kind: LARGE_CONTEXT if kind in ("phi", "phi3", "gpt2", "stablelm") else SMALL_CONTEXT for kind in KINDS}

SPECIAL_TOKENS = (
    "<pad>", "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
)
#: Added (not special) tokens, as in the real Qwen3 tokenizer: they survive ``skip_special_tokens``.
THINK_TOKENS = ("<think>", "</think>")

TRAINING_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A small language model can answer simple questions.",
    "Adapters change how a model behaves on one task.",
    "Hello, how are you today? I am fine, thank you.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a Python function that adds two numbers.",
    "def add(a, b): return a + b",
    "for i in range(10): print(i * i)",
    "Solve 12 + 30 = 42 and 7 * 6 = 42 and 100 - 58 = 42.",
    "Once upon a time there was a tiny model in a big world.",
    "The weather is sunny and warm, with a light breeze.",
    "Please summarise the following text in one sentence.",
    "Translate the word 'house' into German: Haus.",
    "Lists, tuples and dicts are Python containers.",
    "Be brief. Answer in one word if you can.",
    "You are a helpful assistant that answers questions.",
    "The system prompt sets the tone of the answer.",
    "Tell me a short story about a cat and a mouse.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16.",
    "Symbols: ! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
    "Machine learning models learn patterns from data.",
    "The engine loads one base model and many adapters.",
    "Greedy decoding always picks the most likely next token.",
    "Sampling with a temperature makes the output more varied.",
    "Left padding keeps the last token of each prompt aligned.",
    "Streaming yields the answer piece by piece as it is made.",
    "Is this a question? Yes, it is a question.",
    "Math: the square root of 16 is 4, and 2 to the power 5 is 32.",
    "Code: if x > 0: return x else: return -x",
    "Creative writing needs imagination and a little courage.",
    "Good morning! Good night! See you tomorrow.",
    "Tabs\tand\nnew lines\nare characters too.",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)

PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CHATML_TOKENS = {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>"}
TOKENIZER_SETUP: dict[str, tuple[str, dict[str, str | None]]] = {
    "llama": (CHATML_TEMPLATE, CHATML_TOKENS),
    "mistral": (CHATML_TEMPLATE, CHATML_TOKENS),
    "qwen2": (CHATML_TEMPLATE, {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "qwen2_moe": (CHATML_TEMPLATE, {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "qwen3": (QWEN3_TEMPLATE, {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "qwen3_moe": (QWEN3_TEMPLATE, {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "phi": (CHATML_TEMPLATE, {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<pad>"}),
    "phi3": (PHI3_TEMPLATE, {"bos_token": "<s>", "eos_token": "<|end|>", "pad_token": "<pad>"}),
    "gemma": (GEMMA_TEMPLATE, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    "gemma2": (GEMMA_TEMPLATE, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    "gemma3_text": (GEMMA_TEMPLATE, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    # Like the real GPT-2: no pad token, so the backend's "pad = EOS" fallback is exercised.
    "gpt2": (CHATML_TEMPLATE, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": None}),
    "stablelm": (CHATML_TEMPLATE, {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<pad>"}),
}


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the shared byte-level BPE vocabulary once per process; return it serialised."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(TRAINING_SENTENCES, trainer=trainer)
    tokenizer.add_tokens(list(THINK_TOKENS))
    return tokenizer.to_str()


def build_tokenizer(kind: str) -> Any:
    """The fast tokenizer of ``kind``: shared vocabulary, the kind's special tokens and chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    template, tokens = TOKENIZER_SETUP[kind]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        chat_template=template,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in tokens.values()],
        clean_up_tokenization_spaces=False,
        model_max_length=LARGE_CONTEXT,
        # As saved by real Llama/Qwen/Gemma checkpoints: without it PreTrainedTokenizerFast also
        # returns token_type_ids, which the HF backend would pass on to generate() (and fail).
        model_input_names=["input_ids", "attention_mask"],
        **{name: value for name, value in tokens.items() if value is not None},
    )


def _common(tok: Any, max_positions: int = SMALL_CONTEXT) -> dict[str, Any]:
    return {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "initializer_range": INITIALIZER_RANGE,
        "tie_word_embeddings": False,
        "max_position_embeddings": max_positions,
    }


def _decoder(tok: Any, max_positions: int = SMALL_CONTEXT) -> dict[str, Any]:
    """Fields shared by the Llama-style configs (separate q/k/v/o and gate/up/down)."""
    return {
        **_common(tok, max_positions),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS // 2,
    }


def _llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaConfig(**_decoder(tok)), LlamaForCausalLM


def _mistral(tok):
    from transformers import MistralConfig, MistralForCausalLM
    return MistralConfig(**_decoder(tok), sliding_window=None, head_dim=HEAD_DIM), MistralForCausalLM


def _qwen2(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2Config(**_decoder(tok)), Qwen2ForCausalLM


def _qwen2_moe(tok):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    config = Qwen2MoeConfig(
        **_decoder(tok), num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[],
    )
    return config, Qwen2MoeForCausalLM


def _qwen3(tok):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3Config(**_decoder(tok), head_dim=HEAD_DIM), Qwen3ForCausalLM


def _qwen3_moe(tok):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    config = Qwen3MoeConfig(
        **_decoder(tok), head_dim=HEAD_DIM, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        decoder_sparse_step=1, mlp_only_layers=[],
    )
    return config, Qwen3MoeForCausalLM


def _phi(tok):
    from transformers import PhiConfig, PhiForCausalLM
    config = PhiConfig(**_decoder(tok, LARGE_CONTEXT), partial_rotary_factor=0.5)
    return config, PhiForCausalLM


def _phi3(tok):
    from transformers import Phi3Config, Phi3ForCausalLM
    config = Phi3Config(**_decoder(tok, LARGE_CONTEXT), original_max_position_embeddings=LARGE_CONTEXT)
    return config, Phi3ForCausalLM


def _gemma(tok):
    from transformers import GemmaConfig, GemmaForCausalLM
    return GemmaConfig(**_decoder(tok), head_dim=HEAD_DIM), GemmaForCausalLM


def _gemma2(tok):
    from transformers import Gemma2Config, Gemma2ForCausalLM
    config = Gemma2Config(**_decoder(tok), head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=64)
    return config, Gemma2ForCausalLM


def _gemma3_text(tok):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    config = Gemma3TextConfig(**_decoder(tok), head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=64)
    return config, Gemma3ForCausalLM


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel
    common = _common(tok, LARGE_CONTEXT)
    config = GPT2Config(
        vocab_size=common["vocab_size"], n_positions=LARGE_CONTEXT, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
        bos_token_id=common["bos_token_id"], eos_token_id=common["eos_token_id"],
        initializer_range=INITIALIZER_RANGE,
    )
    return config, GPT2LMHeadModel


def _stablelm(tok):
    from transformers import StableLmConfig, StableLmForCausalLM
    config = StableLmConfig(**_decoder(tok, LARGE_CONTEXT), partial_rotary_factor=0.5)
    return config, StableLmForCausalLM


BUILDERS: dict[str, Callable[[Any], tuple[Any, type]]] = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen2_moe": _qwen2_moe, "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe, "phi": _phi, "phi3": _phi3, "gemma": _gemma, "gemma2": _gemma2,
    "gemma3_text": _gemma3_text, "gpt2": _gpt2, "stablelm": _stablelm,
}


def build_tiny_model(kind: str, folder: Path) -> Path:
    """Write a tiny random-weight model of ``kind`` (one of ``KINDS``) into ``folder``; return ``folder``.

    The weights are drawn after ``torch.manual_seed(0)``, so the same kind always gives the same model.
    """
    if kind not in BUILDERS:
        raise ValueError(f"Unknown tiny model kind {kind!r}; known: {', '.join(KINDS)}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(kind)
    config, model_class = BUILDERS[kind](tokenizer)
    assert config.max_position_embeddings == MAX_POSITIONS[kind], kind
    assert config.num_hidden_layers == LAYERS and config.hidden_size == HIDDEN, kind
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
