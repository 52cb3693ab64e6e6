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
    """The processor factories by name; ``broken`` names each entry point that did not load, and why."""

    def __init__(self, factories: dict[str, Any], broken: dict[str, str] | None = None) -> None:
        self._factories = factories
        self.broken = broken or {}

    @classmethod
    def load(cls) -> ProcessorRegistry:
        factories: dict[str, Any] = {}
        broken: dict[str, str] = {}
        owners: dict[str, str] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            owner = ep.dist.name if ep.dist is not None else "an unnamed distribution"
            if ep.name in owners:
                if owners[ep.name] != owner:
                    # Which one loads would depend on the order packages are found in; a plugin named
                    # like a built-in (pii) could replace the redaction. Refuse the name instead.
                    factories.pop(ep.name, None)
                    broken[ep.name] = (f"processor {ep.name!r} is registered by two packages, {owners[ep.name]} and "
                                       f"{owner}: uninstall one, or have the plugin register another name")
                continue
            owners[ep.name] = owner
            where = f"processor {ep.name!r} (entry point {ep.name} = {ep.value!r})"
            try:
                factory = ep.load()
            except Exception as exc:  # a broken plugin must not take the collector down silently
                broken[ep.name] = f"{where} could not be loaded: {type(exc).__name__}: {_one_line(exc)}"
                continue
            if getattr(factory, "kind", None) not in ("span", "trace") or not hasattr(factory, "from_config"):
                broken[ep.name] = f"{where} does not provide kind ('span' or 'trace') and from_config()"
                continue
            factories[ep.name] = factory
        return cls(factories, broken)

    def get(self, name: str) -> ProcessorFactory | None:
        return self._factories.get(name)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def unknown(self, name: str) -> str:
        """Why ``name`` has no factory: its entry point failed to load, or no package registers it."""
        return self.broken.get(name) or f"unknown processor {name!r} (known: {', '.join(self.names())})"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
