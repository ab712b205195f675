"""Built-in adapter routers (keyword, semantic, classifier), one module (and one entry point) each."""
