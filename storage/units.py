"""Durations (``250ms``, ``5s``, ``2m``), sizes (``512KiB``, ``64MiB``) and ``${env:...}`` values as written in config files."""

from __future__ import annotations

import decimal
import math
import re

#: One or more ``<number><unit>`` parts: ``5s``, and Go's compound form the OpenTelemetry Collector's
#: configs use (``1m30s``, ``1h30m``, ``1h0m0s`` as Go prints a duration).
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h)\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_BYTES = {
    None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """Seconds from ``250ms`` / ``5s`` / ``2m`` / ``1h`` or a sum of them, ``1m30s`` (a bare number is
    seconds, also one from ``${env:VAR}``). Raises ValueError."""
    value = typed_env(value)
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 250ms, 5s or 2m, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):  # YAML's .inf / .nan
            raise ValueError(f"expected a finite duration such as 250ms, 5s or 2m, got {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        if _DURATION.match(value):
            # milliseconds divided, not multiplied by 0.001: 61001ms is 61.001 s, not 61.001000000000005
            return sum(float(n) / 1000 if unit == "ms" else float(n) * _DURATION_SECONDS[unit]
                       for n, unit in _DURATION_PART.findall(value))
    raise ValueError(f"expected a duration such as 250ms, 5s or 2m, got {value!r}")


def parse_size(value: object) -> int:
    """Bytes from ``512KiB`` / ``64MiB`` / ``1GiB`` (a bare number is bytes). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 512KiB or 64MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value!r}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_BYTES[m.group(2)])
    raise ValueError(f"expected a size such as 512KiB or 64MiB, got {value!r}")


def format_duration(seconds: float) -> str:
    """``seconds`` as ``250ms`` / ``5s`` / ``2m``, read back by :func:`parse_duration` as the same number.

    ``%g`` kept six digits: ``1h1ms`` printed as ``3600s`` and ``0.0005s`` as ``0ms``, so a printed
    config did not read back as the same config.
    """
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if 0 < seconds < 1 and float(f"{round(seconds * 1000)}") / 1000 == seconds:
        return f"{round(seconds * 1000)}ms"
    text = f"{seconds:g}"
    if float(text) != seconds or "e" in text:
        text = format(decimal.Decimal(repr(seconds)), "f")  # every digit, never an exponent
    return f"{text}s"


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


class EnvText(str):
    """A config value that was one whole ``${env:VAR}``: the variable's text, typed where it is read.

    An environment variable is always text, so ``max_queued_spans: ${env:QUEUE}`` must still give a
    number setting its number, while ``bearer_token: ${env:TOKEN}`` keeps a token of digits as text
    (the OpenTelemetry Collector does the same). Number and boolean settings read it with
    :func:`typed_env`; text settings take it as it is.
    """


_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT = re.compile(r"^\s*[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?\s*$")


def typed_env(value: object) -> object:
    """An :class:`EnvText` holding an integer, a number or true/false as that; anything else unchanged."""
    if not isinstance(value, EnvText):
        return value
    if _INT.match(value):
        return int(value)
    if _FLOAT.match(value):
        return float(value)
    if value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value
