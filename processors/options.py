"""Reading a processor's options from config: typed getters that collect every problem, with its YAML path.

Usage inside ``from_config``::

    opts = OptionReader(options, path)          # path like "processors.pii"
    key = opts.str("secret_key", None)
    wait = opts.duration("decision_wait", 5.0)
    opts.finish()                               # raises ConfigError listing all problems, unknown keys included
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tracesieve.storage.errors import ConfigError
from tracesieve.storage.units import parse_duration, parse_size, typed_env

_MISSING = object()


class OptionReader:
    def __init__(self, options: Mapping[str, Any] | None, path: str) -> None:
        if options is None:
            options = {}
        self.path = path
        self.problems: list[str] = []
        if not isinstance(options, Mapping):
            self.problems.append(f"{path}: expected a mapping, got {type(options).__name__}")
            options = {}
        self._options = dict(options)
        self._seen: set[str] = set()

    def here(self, key: str | int) -> str:
        return f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}"

    def problem(self, key: str | int, message: str) -> None:
        self.problems.append(f"{self.here(key)}: {message}")

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self._options.get(key, default)

    def _typed(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        self._seen.add(key)
        if key not in self._options or self._options[key] is None:
            return default
        value = self._options[key]
        if str not in types:
            value = typed_env(value)
        if isinstance(value, bool) and bool not in types:
            self.problem(key, f"expected {what}, got {value!r}")
            return default
        if not isinstance(value, types):
            self.problem(key, f"expected {what}, got {type(value).__name__} {value!r}")
            return default
        return value

    def str(self, key: str, default: Any = None) -> Any:
        return self._typed(key, default, (str,), "a string")

    def secret(self, key: str, default: Any = None) -> Any:
        """A string that must never be echoed: a wrong value is named by its type only."""
        self._seen.add(key)
        value = self._options.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {type(value).__name__} (value not shown: it is a secret)")
            return default
        return value

    def bool(self, key: str, default: bool) -> bool:
        return self._typed(key, default, (bool,), "true or false")

    def int(self, key: str, default: int) -> int:
        return self._typed(key, default, (int,), "an integer")

    def number(self, key: str, default: float) -> float:
        value = float(self._typed(key, default, (int, float), "a number"))
        if not math.isfinite(value):  # YAML's .inf / .nan: every comparison with it is true, or none is
            self.problem(key, f"expected a finite number, got {value!r}")
            return default
        return value

    def list(self, key: str, default: list[Any] | None = None) -> list[Any]:
        return list(self._typed(key, default if default is not None else [], (list,), "a list"))

    def mapping(self, key: str, default: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(self._typed(key, default if default is not None else {}, (dict,), "a mapping"))

    def duration(self, key: str, default: float) -> float:
        self._seen.add(key)
        if key not in self._options:
            return default
        try:
            return parse_duration(self._options[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def size(self, key: str, default: int) -> int:
        self._seen.add(key)
        if key not in self._options:
            return default
        try:
            return parse_size(self._options[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(key, default)
        if value not in choices:
            self.problem(key, f"expected one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def finish(self) -> None:
        """Report unknown keys and every problem collected, at once."""
        for key in self._options:
            if key not in self._seen:
                self.problem(key, "unknown key")
        if self.problems:
            raise ConfigError(self.problems)
