"""Built-in processors: ``drop``, the field processors (``drop_fields``, ``add_fields``, ``add_tags``,
``rename``) and ``geoip``. Every processor accepts ``when:``, a condition (:mod:`flowpipe.conditions`)."""
