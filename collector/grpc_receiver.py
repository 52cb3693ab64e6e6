"""OTLP/gRPC receiver: ``TraceService/Export`` on grpcio, mapping export errors to gRPC status in one place."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tracesieve.collector.config import Endpoint
from tracesieve.collector.export import ExportService, retry_hint
from tracesieve.collector.metrics import refusal_reason
from tracesieve.storage.errors import (
    ExportError, PermanentError, ProcessorFailedError, RetryableError, TooLargeError, UnauthenticatedError,
)

log = logging.getLogger("tracesieve.grpc")


def abort_with(context: grpc.ServicerContext, exc: Exception) -> None:
    """The one mapping from an export error to a gRPC status (with RetryInfo trailers when retryable)."""
    if isinstance(exc, RetryableError):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_hint(exc) * 1e9))
        info = error_details_pb2.RetryInfo(retry_delay=delay)
        status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
        status.details.add().Pack(info)
        context.set_trailing_metadata((
            ("google.rpc.retryinfo-bin", info.SerializeToString()),   # what the Python exporter reads
            ("grpc-status-details-bin", status.SerializeToString()),  # the standard rich status
        ))
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, TooLargeError):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, UnauthenticatedError):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if isinstance(exc, PermanentError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, ProcessorFailedError):
        context.abort(grpc.StatusCode.INTERNAL, str(exc))
    context.abort(grpc.StatusCode.INTERNAL, "internal error while storing the spans")


SERVICE_NAME = "opentelemetry.proto.collector.trace.v1.TraceService"


class _TraceServicer:
    """Export takes the raw bytes so that an undecodable request is INVALID_ARGUMENT, not grpcio's INTERNAL."""

    def __init__(self, service: ExportService) -> None:
        self._service = service

    def export(self, body: bytes, context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        started = time.perf_counter()
        metrics = self._service.metrics
        try:
            if self._service.auth_required:
                metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
                self._service.authenticate(metadata)
            with self._service.holding(len(body)):
                outcome = self._service.export_body(body, "application/x-protobuf")
        except ExportError as exc:
            metrics.request_refused(refusal_reason(exc))
            metrics.observe_request(time.perf_counter() - started)
            abort_with(context, exc)
            raise  # unreachable: abort raises
        except Exception as exc:
            log.error("export failed: %s", type(exc).__name__)
            metrics.request_refused("internal")
            metrics.observe_request(time.perf_counter() - started)
            abort_with(context, exc)
            raise
        metrics.observe_request(time.perf_counter() - started)
        response = trace_service_pb2.ExportTraceServiceResponse()
        if outcome.rejected:
            response.partial_success.rejected_spans = outcome.rejected
            response.partial_success.error_message = outcome.error_message
        return response


def start_grpc_server(endpoint: Endpoint, service: ExportService, max_workers: int = 16) -> tuple[grpc.Server, int]:
    """Start serving; returns the server and the bound port (useful when the endpoint asks for port 0)."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tracesieve-grpc"),
        options=[
            ("grpc.max_receive_message_length", service.max_request_size),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = _TraceServicer(service)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Export": grpc.unary_unary_rpc_method_handler(
            servicer.export,
            request_deserializer=None,  # raw bytes; parsed (and judged) by us
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
        ),
    }),))
    creds = None
    if endpoint.tls:
        with open(endpoint.tls.key_file, "rb") as kf, open(endpoint.tls.cert_file, "rb") as cf:
            creds = grpc.ssl_server_credentials([(kf.read(), cf.read())])
    try:
        port = server.add_secure_port(endpoint.address, creds) if endpoint.tls else \
            server.add_insecure_port(endpoint.address)
    except RuntimeError:  # grpcio raises instead of returning 0 when the bind fails
        port = 0
    if port == 0:
        raise OSError(f"cannot bind the gRPC receiver to {endpoint.address} (address in use?)")
    server.start()
    return server, port
