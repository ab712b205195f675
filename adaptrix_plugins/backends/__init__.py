"""Built-in backends, one module (and one entry point) each."""
