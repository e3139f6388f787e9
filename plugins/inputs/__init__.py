"""Built-in inputs: one module per input plugin."""
