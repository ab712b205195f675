"""Retrieval for RAG: document readers, token chunking, and the atomic SQLite + FAISS index.

The engine's :class:`~adaptrix_core.engine_rag.RagMixin` ties them to the shared embedder. Nothing
heavy is imported here: faiss and pypdf load inside the functions that need them.
"""
