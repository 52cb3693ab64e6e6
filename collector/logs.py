"""Log line formats for ``serve``: ``text`` (one human line, or a block) and ``json`` (one object per line).

Structured fields travel as ``extra=`` keys on the log call; the text format
shows the message (plus an optional ``block`` of indented lines), the JSON
format ``{"ts", "level", "logger", "msg", ...fields}``. Both formats blank out
every configured secret (the bearer token) wherever it would appear and show
only the type of an exception (its message may quote span content), as a last
line of defence: no code path is meant to log either.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
REDACTED = "[redacted]"

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_TEXT_ONLY = frozenset({"block"})


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of ``record`` (its ``extra=`` keys)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and k not in _TEXT_ONLY}


class _Scrubbing(logging.Formatter):
    def __init__(self, secrets: Iterable[str], fmt: str | None = None) -> None:
        super().__init__(fmt)
        # the secret as written, and as JSON escapes it (a token with a quote or backslash in it)
        forms = {form for s in secrets if s for form in (s, json.dumps(s, ensure_ascii=False)[1:-1])}
        self._secrets = sorted(forms, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


class TextFormatter(_Scrubbing):
    """``2026-01-01 10:00:00,000 INFO tracesieve.server: message`` and the record's ``block`` lines indented."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets, "%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        # The type only: an exception's message or traceback locals may quote span content.
        return f"({ei[0].__name__ if ei and ei[0] else 'exception'}; details omitted from the log)"

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        block: Sequence[str] | None = getattr(record, "block", None)
        if block:
            text += "".join(f"\n  {line}" for line in block)
        return self.scrub(text)


class JsonFormatter(_Scrubbing):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
        return self.scrub(json.dumps(doc, ensure_ascii=False, default=str))


class AcceptErrorsOnce(logging.Filter):
    """One line a minute, instead of a flood, when the HTTP receiver cannot accept connections.

    Out of file descriptors (``ulimit -n``), asyncio logs "socket.accept() out of system resource" with
    a traceback for every connection waiting in the backlog, again and again: 780,000 lines in 5 s. The
    first one becomes one clear line, the repeats within a minute are dropped.
    """

    INTERVAL = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last = -self.INTERVAL

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "asyncio" or not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        now = time.monotonic()
        if now - self._last < self.INTERVAL:
            return False
        self._last = now
        exc = record.exc_info[1] if record.exc_info else None
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        record.msg = ("cannot accept connections on the HTTP port: %s (raise the open files limit, ulimit -n); "
                      "clients wait or retry, and it accepts again once descriptors are free (said once a minute)")
        record.args = (reason,)
        record.exc_info = None
        record.exc_text = None
        return True


def configure_logging(log_format: str, stream: TextIO, secrets: Iterable[str] = ()) -> None:
    """Send every log record at INFO and above to ``stream`` in ``log_format`` (replaces earlier handlers)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(secrets) if log_format == "json" else TextFormatter(secrets))
    handler.addFilter(AcceptErrorsOnce())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
