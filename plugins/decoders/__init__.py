"""Built-in decoders: one module per decoder plugin."""
