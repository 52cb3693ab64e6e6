"""Processor registry: every processor, built-in or third-party, comes from the entry-point group.

The built-ins (``pii``, ``detectors``, ``promotion``) are declared in this
project's own pyproject under ``[project.entry-points."tracesieve.processors"]``,
exactly as a plugin package would declare its own.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

from tracesieve.processors.base import ProcessorFactory

ENTRY_POINT_GROUP = "tracesieve.processors"
log = logging.getLogger("tracesieve.registry")


class ProcessorRegistry:
    def __init__(self, factories: dict[str, Any], broken: dict[str, str] | None = None) -> None:
        self._factories = factories
        self.broken = broken or {}

    @classmethod
    def load(cls) -> ProcessorRegistry:
        factories: dict[str, Any] = {}
        broken: dict[str, str] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in factories:
                continue
            try:
                factory = ep.load()
            except Exception as exc:  # a broken plugin must not take the collector down silently
                broken[ep.name] = f"{type(exc).__name__}: {exc}"
                continue
            if getattr(factory, "kind", None) not in ("span", "trace") or not hasattr(factory, "from_config"):
                broken[ep.name] = "does not provide kind ('span' or 'trace') and from_config()"
                continue
            factories[ep.name] = factory
        return cls(factories, broken)

    def get(self, name: str) -> ProcessorFactory | None:
        return self._factories.get(name)

    def names(self) -> list[str]:
        return sorted(self._factories)
