"""What the ``kafka`` output and the ``kafka`` input share: brokers, client id, security options and
their librdkafka settings, and where librdkafka's own log lines go.

:func:`connection_settings` turns the shared options into librdkafka settings:
``bootstrap.servers``, ``client.id``, ``security.protocol`` (from which of ``sasl`` and ``ssl``
are set, unless given), every ``sasl.*`` and ``ssl.*`` setting (``ssl`` paths ending in
``location`` taken from the pipeline file's folder, except librdkafka's ``probe``). Each client
adds its own settings, then the user's ``settings`` last.
"""

from __future__ import annotations

import logging
from typing import Any

from flowpipe import AnyValue, Choice, ListOf, MapOf, Option, StageContext, Str

__all__ = ["HOSTS", "LibrdkafkaLog", "client_id_option", "connection_settings", "security_options"]

HOSTS = Option(
    "hosts",
    ListOf(Str(nonempty=True), min_items=1),
    required=True,
    description="bootstrap brokers, host:port",
)


def client_id_option() -> Option:
    """``client_id``: librdkafka's ``client.id``."""
    return Option("client_id", Str(nonempty=True), "flowpipe", "client.id for the brokers' logs and quotas")


def security_options(client: str) -> tuple[Option, ...]:
    """``security_protocol``, ``sasl``, ``ssl`` and ``settings`` (other settings of a ``client``:
    producer or consumer), in this order."""
    return (
        Option(
            "security_protocol",
            Choice("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
            None,
            "security.protocol (default: from which of sasl and ssl are set)",
        ),
        Option(
            "sasl",
            MapOf(AnyValue()),
            {},
            "librdkafka sasl.* settings without the prefix (mechanism, username, password...)",
        ),
        Option(
            "ssl",
            MapOf(AnyValue()),
            {},
            "librdkafka ssl.* settings without the prefix (ca.location...; paths from the pipeline folder)",
        ),
        Option("settings", MapOf(AnyValue()), {}, f"other librdkafka {client} settings, applied last"),
    )


def connection_settings(config: Any, context: StageContext) -> dict[str, Any]:
    """``bootstrap.servers``, ``client.id`` and the security settings from the shared options."""
    settings: dict[str, Any] = {
        "bootstrap.servers": ",".join(config.hosts),
        "client.id": config.client_id,
    }
    settings["security.protocol"] = config.security_protocol or (
        ("sasl_" if config.sasl else "") + ("ssl" if config.ssl else "plaintext")
    )
    settings.update((f"sasl.{name}", value) for name, value in config.sasl.items())
    for name, value in config.ssl.items():
        if name.endswith("location") and isinstance(value, str) and value != "probe":
            value = str(context.resolve_path(value))
        settings[f"ssl.{name}"] = value
    return settings


class LibrdkafkaLog:
    """librdkafka's own log lines go to debug level: its errors reach ``error_cb``, rate-limited."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def log(self, _level: int, message: str, *args: Any) -> None:
        self.logger.debug(message, *args)
