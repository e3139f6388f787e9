"""The built-in application-protocol analyzers, one module per protocol (see :mod:`flowpipe.analyzer`)."""
