"""flowpipe's built-in plugins, installed as ``flowpipe.plugins`` and registered through entry points."""
