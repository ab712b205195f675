# The two commands of the README: `make demo` and `make test` (both set everything up first).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
VENV := .venv/bin

.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/adaptrix query "What is the capital of France?" --temperature 0

test: setup
	$(VENV)/ruff check .
	$(VENV)/python -m pytest -q

bench: setup
	$(VENV)/python benchmarks/bench_generate.py
