"""Retrieval for RAG: document readers, token chunking, and the atomic SQLite + FAISS index.

:class:`~adaptrix_core.rag.service.DocumentIndex` ties them to the shared embedder. Nothing
heavy is imported here: faiss and pypdf load inside the functions that need them.
"""
