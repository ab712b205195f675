"""Generation: from a caller's arguments to text.

``params`` checks generation arguments and resolves them into ``SamplingParams`` (family defaults,
presets, stop strings); ``prompts`` renders conversations with the model family's chat rules;
``service`` answers prompts (one, a batch, a stream) with the chosen adapters; ``requests`` is the
seam a scheduler uses to prepare a request up front and build its result when it ends.
"""
