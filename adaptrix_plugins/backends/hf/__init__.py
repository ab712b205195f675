"""Registers the eager Hugging Face transformers backend as ``hf`` (torch loads on first use)."""

from adaptrix_core import hookimpl


def create_hf_backend():
    """Build an ``HFBackend``; importing it pulls in torch and transformers."""
    from adaptrix_plugins.backends.hf.backend import HFBackend

    return HFBackend()


@hookimpl
def register_backends(register):
    register("hf", create_hf_backend)
