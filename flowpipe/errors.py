"""Exceptions with the exit status the CLI gives them."""

from __future__ import annotations

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "ConfigError",
    "FlowpipeError",
    "OutputError",
    "PluginError",
    "StartupError",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


class FlowpipeError(Exception):
    """Base of errors that end a command with a clear message and an exit status."""

    exit_status = EXIT_RUNTIME


class ConfigError(FlowpipeError):
    """The pipeline file (or a command-line override) is invalid. One message per problem."""

    exit_status = EXIT_CONFIG

    def __init__(self, messages: list[str] | str) -> None:
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))


class PluginError(FlowpipeError):
    """A plugin failed to load, or two plugins claim the same name."""

    exit_status = EXIT_CONFIG


class StartupError(FlowpipeError):
    """A stage could not start (missing file, unwritable path, device not found...)."""


class OutputError(Exception):
    """An output could not deliver a batch.

    ``retryable`` errors (connection refused, disk full, 5xx) are retried with backoff by the
    pipeline; the others count the batch's events as rejected.

    An output that delivered part of the batch (a bulk request where some items failed) says so:
    ``remaining`` holds the events still to deliver (the pipeline retries only those), and
    ``rejected`` how many of the others were refused for good (dead-lettered, counted as
    ``dropped.rejected``); the rest of the batch counts as delivered.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        remaining: list | None = None,
        rejected: int = 0,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.remaining = remaining
        self.rejected = rejected
