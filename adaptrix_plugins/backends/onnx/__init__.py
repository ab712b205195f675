"""Registers the quantized ONNX Runtime GenAI backend as ``onnx``.

Nothing heavy is imported here: onnxruntime, onnxruntime-genai and the model builder load when an
engine first uses the backend. See ``docs/onnx.md``.
"""

from adaptrix_core import hookimpl


def create_onnx_backend():
    """Build an ``OnnxBackend`` (imports onnxruntime-genai)."""
    from adaptrix_plugins.backends.onnx.backend import OnnxBackend

    return OnnxBackend()


@hookimpl
def register_backends(register):
    register("onnx", create_onnx_backend)
