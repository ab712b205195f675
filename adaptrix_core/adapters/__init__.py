"""Adapters: what an adapter is on disk and how the served model uses it.

``metadata`` (``adaptrix.json``), ``schema`` (``adapter_config.json``), ``safetensors_header`` and
``files`` (strict checks before any library reads a file), ``store`` (the folder of adapters:
list, validate, save, import, export, delete), ``compatibility``, ``lora_options`` and
``base_identity`` (does an adapter fit the served base model), ``checks`` (the checker), ``choice``
(the ``adapter`` argument of a request) and ``pool`` (the ``AdapterPool`` service: loaded adapters,
LRU, activation, composition).
"""
