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


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
