"""The one Export implementation behind both receivers: decode -> span stage -> writer -> ack.

Receivers hand over the request body and map the outcome (or the
:mod:`tracesieve.storage.errors` exception raised here) to their wire format.
Called concurrently from receiver worker threads; blocks until the spans are
committed, so returning means "stored".
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
from collections import Counter

import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracesieve.collector.config import Config
from tracesieve.collector.decode import count_spans, parse_json, parse_protobuf
from tracesieve.collector.metrics import ReceiverMetrics
from tracesieve.collector.span_stage import InlineSpanStage, ProcessSpanStage, SpanStage
from tracesieve.storage.errors import RetryableError, UnauthenticatedError
from tracesieve.storage.writer import GroupCommitWriter

log = logging.getLogger("tracesieve.export")

#: How long an export waits for its commit before answering "retry" (the data may still land: ids dedupe).
COMMIT_WAIT_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class ExportOutcome:
    accepted: int
    rejected: int
    error_message: str


def span_stage_for(config: Config) -> SpanStage:
    """Inline when ``service.span_workers`` is 0, else a pool of that many worker processes."""
    if config.span_workers <= 0:
        return InlineSpanStage(config.decode_limits, config.span_processors)
    return ProcessSpanStage(config.span_workers, config.path, config.db_path)


class ExportService:
    def __init__(self, config: Config, writer: GroupCommitWriter, metrics: ReceiverMetrics, stage: SpanStage) -> None:
        self._token = config.bearer_token
        self._stage = stage
        self._writer = writer
        self._metrics = self.metrics = metrics  # the receiver records request-level figures
        self.max_request_size = config.limits.max_request_size

    @property
    def auth_required(self) -> bool:
        return self._token is not None

    def authenticate(self, authorization: str | None) -> None:
        """Raise UnauthenticatedError unless ``authorization`` is ``Bearer <configured token>``."""
        if self._token is None:
            return
        presented = ""
        if authorization and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        if not hmac.compare_digest(presented.encode(), self._token.encode()):
            raise UnauthenticatedError("missing or wrong bearer token")

    def export_body(self, body: bytes, media_type: str) -> ExportOutcome:
        """Parse an OTLP body (protobuf, or OTLP/JSON when ``media_type`` is application/json) and export it."""
        if media_type == "application/json":
            return self.export(parse_json(body))
        return self.export(parse_protobuf(body), wire=body)

    def export(self, request: ExportTraceServiceRequest, wire: bytes | None = None) -> ExportOutcome:
        n = count_spans(request)
        self._metrics.received(n)
        if n == 0:
            return ExportOutcome(0, 0, "")
        try:
            self._writer.reserve(n)
        except RetryableError:
            self._metrics.refused("throttled", n)
            raise
        reserved = n
        try:
            result = self._stage.run(request, wire)
            batch = result.batch
            if result.rejected:
                self._metrics.refused("invalid_span", result.rejected)
                log.info("rejected %d of %d spans: %s", result.rejected, n, _first_line(result.errors))
            if batch.num_rows == 0:
                self._writer.release(reserved)
                reserved = 0
                return ExportOutcome(0, result.rejected, result.error_message)
            self._count_redactions(batch)
            future = self._writer.submit_spans(batch, reserved)
            reserved = 0
        except BaseException:
            if reserved:
                self._writer.release(reserved)
            raise
        try:
            future.result(timeout=COMMIT_WAIT_SECONDS)
        except TimeoutError:
            self._metrics.refused("commit_timeout", batch.num_rows)
            raise RetryableError("the store is slow to commit; retry", 1.0) from None
        except RetryableError:
            self._metrics.refused("commit_failed", batch.num_rows)
            raise
        self._metrics.accepted(batch.num_rows)
        return ExportOutcome(batch.num_rows, result.rejected, result.error_message)

    def _count_redactions(self, batch: pa.Table) -> None:
        totals: Counter[str] = Counter()
        for text in batch.column("pii_redactions").to_pylist():
            if text and text != "{}":
                try:
                    totals.update(json.loads(text))
                except (ValueError, TypeError):
                    pass
        self._metrics.add_redactions(totals)


def _first_line(errors: list[str]) -> str:
    return errors[0] if errors else ""
