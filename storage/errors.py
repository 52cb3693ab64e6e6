"""The exception tree, at the bottom floor so every floor can raise it.

    TraceSieveError
    ├── ConfigError          a config value is wrong; carries every problem with its YAML path
    ├── UsageError           a command was asked something it cannot do (unknown id, refused SQL, bad file)
    │   ├── NotFoundError    an id or file that does not exist
    │   └── StoreLockedError another process holds the store file's lock
    └── ExportError          an OTLP export could not be taken; the receivers map these to the wire in one place
        ├── PermanentError   bad data: HTTP 400 / INVALID_ARGUMENT, never retried
        ├── TooLargeError    over max_request_size: HTTP 413 / RESOURCE_EXHAUSTED, never retried
        ├── UnauthenticatedError  missing or wrong token: HTTP 401 / UNAUTHENTICATED
        ├── ProcessorFailedError  a span-stage processor raised: HTTP 500 / INTERNAL naming the processor
        └── RetryableError   throttled or shutting down: HTTP 503 + Retry-After / UNAVAILABLE + RetryInfo
"""

from __future__ import annotations

from collections.abc import Iterable


class TraceSieveError(Exception):
    """Base of every error tracesieve raises on purpose."""


class ConfigError(TraceSieveError):
    """One or more config problems, each already prefixed with its YAML path."""

    def __init__(self, problems: Iterable[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems))


class UsageError(TraceSieveError):
    """The caller asked for something impossible; the message says what to do instead."""


class NotFoundError(UsageError):
    """An id or a file that does not exist."""


class StoreLockedError(UsageError):
    """Another process holds the DuckDB file's lock (one writer, or readers while a writer wants in).

    Often for a moment only (another CLI command), so a CLI command waits a little before giving this.
    """


class ExportError(TraceSieveError):
    """An OTLP export that is refused as a whole."""


class PermanentError(ExportError):
    """Undecodable or invalid data; retrying the same bytes cannot succeed."""


class TooLargeError(ExportError):
    """The request is over the configured size limit (after decompression)."""


class UnauthenticatedError(ExportError):
    """The bearer token is missing or wrong."""


class ProcessorFailedError(ExportError):
    """A span-stage processor raised on the batch: nothing of it is stored (it may be a redactor).

    The message names the processor and the exception type, never the exception's text, which
    may quote span content. Picklable: it travels back from span-stage worker processes.
    """


class RetryableError(ExportError):
    """Throttled or shutting down; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
