"""What ``serve`` tells its operator: one startup block, then (on a terminal) a periodic status line.

Pure formatting: the CLI gathers the figures from the running collector and
logs what these functions return, so both work in the text and the JSON log
formats (the JSON format carries the figures as fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracesieve.storage.units import format_duration

ENDPOINT_PATHS = "/v1/traces; /metrics /healthz /readyz /api/<op>"


def startup_block(info: Mapping[str, Any]) -> list[str]:
    """The lines under "tracesieve is up" (see ``Collector.startup_info``); never a token or a value."""
    limits = info.get("limits") or {}
    workers = int(info.get("span_workers") or 0)
    return [
        f"OTLP/gRPC      {info.get('grpc') or 'off'}",
        f"OTLP/HTTP      {info.get('http') or 'off'}" + (f"  ({ENDPOINT_PATHS})" if info.get("http") else
                                                          f"  (query surface {info['query_surface']}/api/<op>)"
                                                          if info.get("query_surface") else ""),
        f"store          {info.get('store')}",
        f"pipeline       {' -> '.join(info.get('pipeline') or []) or '(no processors)'}",
        "limits         " + (", ".join(f"{k} {v}" for k, v in limits.items()) or "defaults"),
        f"span workers   {workers}" + ("" if workers else " (decode and span stage in the receiving threads)"),
        f"decision_wait  {format_duration(float(info.get('decision_wait_seconds') or 0))}",
        f"auth           {info.get('auth') or 'off'}",
    ]


def status_fields(previous: Mapping[str, float], current: Mapping[str, float], seconds: float) -> dict[str, float]:
    """The status figures between two ``Collector.status()`` snapshots taken ``seconds`` apart."""
    accepted = current.get("spans_accepted", 0.0) - previous.get("spans_accepted", 0.0)
    return {
        "spans_per_second": round(accepted / seconds, 1) if seconds > 0 else 0.0,
        "queued_spans": int(current.get("queued_spans", 0)),
        "pending_traces": int(current.get("pending_traces", 0)),
        "detections": int(current.get("detections", 0)),
    }


def status_line(fields: Mapping[str, float]) -> str:
    """One line: ``812.4 spans/s, queue 120 spans, 3 pending traces, 17 detections``."""
    return (f"{fields['spans_per_second']:.1f} spans/s, queue {int(fields['queued_spans'])} spans, "
            f"{int(fields['pending_traces'])} pending traces, {int(fields['detections'])} detections")
