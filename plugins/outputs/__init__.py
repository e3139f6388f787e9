"""Built-in outputs: one module per output plugin."""
