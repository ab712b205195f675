"""Registers the ``remote`` backend: generation by an OpenAI-compatible server (vLLM, ``adaptrix serve``).

``ModularAdaptrixEngine("http://vllm:8000/v1", backend="remote")`` keeps routing, RAG and the adapter
store in Adaptrix and sends each request to the upstream. Importing this module imports nothing
heavy; httpx loads when an engine builds the backend. See ``backend.py`` and docs/scale-out.md.
"""

from adaptrix_core import hookimpl


def create_remote_backend():
    """Build a ``RemoteBackend`` (imports httpx)."""
    from adaptrix_plugins.backends.remote.backend import RemoteBackend

    return RemoteBackend()


@hookimpl
def register_backends(register):
    register("remote", create_remote_backend)
