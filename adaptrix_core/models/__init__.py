"""The base model: model families as data and their detection (``families``), model ids to files
on this machine (``source``), layer presets (``layers``), and ``LoadedModel``, the facts about the
one model an engine serves that its services share (``loaded``)."""
