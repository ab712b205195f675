"""Importing adaptrix_core stays light: no torch, onnxruntime or faiss until a model is loaded."""

import subprocess
import sys


def test_import_does_not_pull_heavy_libraries():
    code = (
        "import sys, adaptrix_core\n"
        "from adaptrix_core import ModularAdaptrixEngine, load_config\n"
        "from adaptrix_core.cli import cli\n"
        "engine = ModularAdaptrixEngine()\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'faiss', 'peft') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == ""
