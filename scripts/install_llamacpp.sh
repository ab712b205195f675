#!/usr/bin/env bash
# Optional: llama-cpp-python, for the llama.cpp side of benchmarks/bench_onnx.py (--sides ...,llamacpp).
# Not part of the default install or CI: it compiles llama.cpp from source (about 5 minutes on 2 cores).
# The default -march=native build crashed here in llama.cpp's AMX kernels, hence the CMake options.
# The source stays in .llamacpp/ (git-ignored): its convert_lora_to_gguf.py converts PEFT adapters.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-.venv/bin/python}"
mkdir -p .llamacpp
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d .llamacpp "llama-cpp-python==$VERSION"
tar -xzf ".llamacpp/llama_cpp_python-$VERSION.tar.gz" -C .llamacpp
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$PYTHON" -m pip install --upgrade-strategy only-if-needed ".llamacpp/llama_cpp_python-$VERSION.tar.gz"
"$PYTHON" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
