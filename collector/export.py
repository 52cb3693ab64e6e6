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
import random
import secrets
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracesieve.collector.config import Config
from tracesieve.collector.decode import count_spans, parse_json, parse_protobuf
from tracesieve.collector.metrics import ReceiverMetrics
from tracesieve.collector.runtime import MemoryWatch
from tracesieve.collector.span_stage import InlineSpanStage, ProcessSpanStage, SpanStage
from tracesieve.storage.errors import PermanentError, ProcessorFailedError, RetryableError, UnauthenticatedError
from tracesieve.storage.units import format_size
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
        return InlineSpanStage(config.decode_limits, config.span_processors, config.span_processor_ids)
    return ProcessSpanStage(config.span_workers, config.path, config.db_path)


class ExportService:
    def __init__(self, config: Config, writer: GroupCommitWriter, metrics: ReceiverMetrics, stage: SpanStage,
                 memory: MemoryWatch | None = None) -> None:
        self._token = config.bearer_token.encode() if config.bearer_token else None
        self._api_key = config.api_key.encode() if config.api_key else None
        #: the query surface's own secret, written by the collector beside the store for its user only
        self.local_token = secrets.token_urlsafe(32)
        self._stage = stage
        self._writer = writer
        self._metrics = self.metrics = metrics  # the receiver records request-level figures
        self.max_request_size = config.limits.max_request_size
        self._inflight = InflightBytes(config.limits.max_inflight_size, config.limits.retry_after)
        self._max_memory = config.limits.max_memory
        self._retry_after = config.limits.retry_after
        self._memory = memory if self._max_memory else None

    @property
    def auth_required(self) -> bool:
        return self._token is not None or self._api_key is not None

    def authenticate(self, headers: Mapping[str, str]) -> None:
        """Raise UnauthenticatedError unless ``Authorization: Bearer <token>`` or ``x-api-key: <key>`` matches.

        ``headers`` has lowercase keys (HTTP headers, gRPC metadata). Both comparisons always run,
        in constant time, so the answer's timing says nothing about either secret.
        """
        if not self.auth_required:
            return
        authorization = headers.get("authorization") or ""
        bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        key = (headers.get(API_KEY_HEADER) or "").strip()
        bearer_ok = _matches(bearer, self._token)
        key_ok = _matches(key, self._api_key)
        if not (bearer_ok or key_ok):
            raise UnauthenticatedError("missing or wrong token (send Authorization: Bearer <token> or "
                                       f"{API_KEY_HEADER}: <key>)")

    def authorize_query(self, headers: Mapping[str, str]) -> None:
        """Raise UnauthenticatedError unless the request may use the query surface (``/api/<op>``).

        With auth set: the configured credentials, as for ingest. Without: the collector's local token
        (``<db>.serve.token``, readable by the collector's user only, sent in ``x-tracesieve-local-token``),
        so that a loopback port open to every account on the host does not serve the store that is
        private on disk.
        """
        if self.auth_required:
            self.authenticate(headers)
            return
        if not _matches((headers.get(LOCAL_TOKEN_HEADER) or "").strip(), self.local_token.encode()):
            raise UnauthenticatedError("the query surface needs the collector's local token (the CLI reads it "
                                       "from <db>.serve.token: run it as the collector's user)")

    @contextmanager
    def holding(self, n_bytes: int) -> Iterator[Hold]:
        """Count ``n_bytes`` of request body as held until the block ends (throttles past max_inflight_size)."""
        hold = Hold(self._inflight)
        hold.grow_to(n_bytes)
        try:
            yield hold
        finally:
            self._inflight.release(hold.n_bytes)

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
            self._check_memory()
        except RetryableError:
            self._metrics.refused("memory", n)
            raise
        try:
            self._writer.reserve(n)
        except RetryableError:
            self._metrics.refused("throttled", n)
            raise
        reserved = n
        try:
            try:
                result = self._stage.run(request, wire)
            except ProcessorFailedError as exc:
                log.error("export failed: %s; the request is refused, nothing of it stored", exc)
                raise
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
        except (RetryableError, PermanentError):  # permanent: DuckDB cannot take a value of this request
            self._metrics.refused("commit_failed", batch.num_rows)
            raise
        self._metrics.accepted(batch.num_rows)
        return ExportOutcome(batch.num_rows, result.rejected, result.error_message)

    def _check_memory(self) -> None:
        """The throttling answer while the collector is over ``max_memory`` and has spans to commit.

        With nothing queued the request is admitted anyway: the memory is then the store's and the
        libraries', which refusing cannot lower, and a collector that refused everything would never
        drain. (The same rule as for a single request larger than max_queued_spans.)
        """
        if self._memory is None or self._memory.resident <= self._max_memory or not self._writer.queued_spans:
            return
        raise RetryableError(f"the collector is over its memory limit ({self._memory.resident >> 20} MiB resident, "
                             f"max_memory {format_size(self._max_memory)}); retry shortly", self._retry_after)

    def _count_redactions(self, batch: pa.Table) -> None:
        totals: Counter[str] = Counter()
        for text in batch.column("pii_redactions").to_pylist():
            if text and text != "{}":
                try:
                    totals.update(json.loads(text))
                except (ValueError, TypeError):
                    pass
        self._metrics.add_redactions(totals)


API_KEY_HEADER = "x-api-key"
LOCAL_TOKEN_HEADER = "x-tracesieve-local-token"
MAX_RETRY_HINT_SECONDS = 5.0


def retry_hint(exc: RetryableError) -> float:
    """The delay to tell a throttled client: the configured one stretched by up to 2x, at random, at most 5 s.

    The OTel exporters wait exactly the hinted delay (no jitter of their own) and give up after six
    tries, so clients refused together would otherwise all come back together and collide again.
    The draw stays under the cap rather than being clipped to it: with ``retry_after: 4s``, clipping
    told three refused clients in four to come back after exactly 5 s, together.
    """
    base = min(exc.retry_after, MAX_RETRY_HINT_SECONDS)
    return random.uniform(base, min(2 * base, MAX_RETRY_HINT_SECONDS))


def _matches(presented: str, secret: bytes | None) -> bool:
    if secret is None:
        hmac.compare_digest(b"", b"-")  # the same work either way
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), secret)


class InflightBytes:
    """Bytes of request bodies held at once; a request that would pass the limit gets the throttling answer.

    Spans queued for commit are bounded by ``max_queued_spans``; this bounds the bytes before that
    point (bodies read, parsed, in the span stage). A single request larger than the limit is
    admitted when nothing else is held, as with queued spans.
    """

    def __init__(self, limit: int, retry_after: float) -> None:
        self.limit = limit
        self._retry_after = retry_after
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def acquire(self, n: int, own: int = 0) -> None:
        """Hold ``n`` more bytes for a request already holding ``own``; refused only when others hold some."""
        with self._lock:
            if self._held > own and self._held + n > self.limit:
                raise RetryableError(f"too many request bytes in flight ({self._held} held); retry shortly",
                                     self._retry_after)
            self._held += n

    def release(self, n: int) -> None:
        with self._lock:
            self._held -= n


class Hold:
    """One request's share of the in-flight bytes; grows when the body turns out larger than declared."""

    def __init__(self, budget: InflightBytes) -> None:
        self._budget = budget
        self.n_bytes = 0

    def grow_to(self, n_bytes: int) -> None:
        if n_bytes > self.n_bytes:
            self._budget.acquire(n_bytes - self.n_bytes, own=self.n_bytes)
            self.n_bytes = n_bytes


def _first_line(errors: list[str]) -> str:
    return errors[0] if errors else ""
