"""Training adapters: examples from JSONL (``data``), scoring answers (``metrics``), and the
``Trainer`` service that trains a LoRA adapter on the served model and evaluates it against the
base model on held-out examples (``trainer``)."""
