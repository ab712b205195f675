"""Built-in model families, one small module (and one entry point) each."""
