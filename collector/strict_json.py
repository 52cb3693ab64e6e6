"""JSON text as tracesieve writes it for other programs: strict, so any parser takes it.

Python's ``json`` writes NaN and the infinities as ``NaN`` / ``Infinity``, which JSON has no spelling
for and strict parsers (Node's ``JSON.parse``, Go's ``encoding/json``, ``jq``) refuse. DuckDB answers
and YAML datasets (``.nan``, ``.inf``) hold them, so every JSON the CLI prints or hands an agent
writes them as ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def strict_json(value: Any, indent: int | None = None, default: Any = None) -> str:
    """``value`` as strict JSON text: NaN and the infinities become null (``default`` as json.dumps's)."""
    return json.dumps(finite(value), ensure_ascii=False, indent=indent, allow_nan=False, default=default)


# Line breaks that JSON lets stand raw inside a string, but that line readers split at: Python's
# str.splitlines takes NEL and the Unicode line and paragraph separators for line ends.
_RAW_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def strict_json_line(value: Any, default: Any = None) -> str:
    """``value`` as one JSON Lines record: strict JSON on one line, whatever line breaks its strings hold.

    ``json.dumps`` escapes ``\\n`` and ``\\r`` but writes U+0085, U+2028 and U+2029 as they are, and a
    reader that splits the text with ``str.splitlines`` then cuts one record in two. They occur only inside
    strings, so escaping them changes no value.
    """
    return strict_json(value, default=default).translate(_RAW_LINE_BREAKS)


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
