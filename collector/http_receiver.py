"""OTLP/HTTP receiver (Starlette on uvicorn): ``POST /v1/traces``, health, metrics and the query surface.

Export errors are mapped to HTTP in exactly one function (:func:`error_response`);
every OTLP response body is encoded like the request (protobuf in, protobuf out;
JSON in, JSON out). Decoding and committing run in worker threads so the event
loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tracesieve.collector.api import Hangup
from tracesieve.collector.export import ExportService, Hold, retry_hint
from tracesieve.collector.metrics import CONTENT_TYPE, refusal_reason
from tracesieve.storage.errors import (
    ExportError, NotFoundError, PermanentError, ProcessorFailedError, RetryableError, TooLargeError,
    UnauthenticatedError, UsageError,
)

log = logging.getLogger("tracesieve.http")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SUPPORTED = (PROTOBUF, JSON)


def error_response(exc: Exception, media_type: str) -> Response:
    """The one mapping from an export error to HTTP status + google.rpc.Status body in the request's encoding."""
    headers: dict[str, str] = {}
    if isinstance(exc, RetryableError):
        status, code = 503, code_pb2.UNAVAILABLE
        headers["Retry-After"] = str(max(1, round(retry_hint(exc))))
    elif isinstance(exc, TooLargeError):
        status, code = 413, code_pb2.RESOURCE_EXHAUSTED
    elif isinstance(exc, UnauthenticatedError):
        status, code = 401, code_pb2.UNAUTHENTICATED
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, PermanentError):
        status, code = 400, code_pb2.INVALID_ARGUMENT
    elif isinstance(exc, ProcessorFailedError):
        status, code = 500, code_pb2.INTERNAL
    else:
        status, code = 500, code_pb2.INTERNAL
        exc = Exception("internal error while storing the spans")
    body = status_pb2.Status(code=code, message=str(exc))
    return _encode(body, media_type, status, headers)


def refusal(status: int, code: int, message: str, media_type: str, headers: dict[str, str] | None = None) -> Response:
    """A 4xx that is not an export error (wrong path or method): a google.rpc.Status encoded like the
    request when it is an OTLP request (the spec's rule for every error body), plain text otherwise."""
    if media_type in SUPPORTED:
        return _encode(status_pb2.Status(code=code, message=message), media_type, status, headers)
    return PlainTextResponse(f"{status} {message}", status_code=status, headers=headers)


def _encode(message: Any, media_type: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    if media_type == JSON:
        content = json_format.MessageToJson(message, indent=None).encode() if message.ByteSize() else b"{}"
    else:
        content = message.SerializeToString()
    return Response(content, status_code=status, media_type=media_type, headers=headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int, hold: Hold) -> bytes:
    """The decompressed body, never inflated past ``limit`` (413 beyond it).

    ``hold`` grows with the bytes actually received (not the declared length: a client that
    declares 64 MiB and sends nothing must not hold the in-flight budget).
    """
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        inflater = _Inflater(encoding, limit)
    else:
        raise PermanentError(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)")
    # The limit is on the inflated body; compressed, a body within it can be a little larger (stored
    # blocks, headers). The cap on what is read stops input that inflates to little or nothing.
    cap = limit if inflater is None else _compressed_cap(limit)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap:
        raise TooLargeError(f"request body is {length} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = received = 0
    try:
        async for chunk in request.stream():
            if inflater is None:
                out = chunk
            else:
                received += len(chunk)
                if received > cap:
                    raise TooLargeError(f"the {encoding} body exceeds {cap} bytes; the limit is {limit} bytes "
                                        "after decompression")
                out = inflater.feed(chunk)
            size += len(out)
            if size > limit:
                raise TooLargeError(f"request body exceeds the limit of {limit} bytes")
            hold.grow_to(size)
            chunks.append(out)
        if inflater is not None:
            inflater.finish()
    except zlib.error as exc:
        raise PermanentError(f"the body is not valid {encoding}: {exc}") from None
    return b"".join(chunks)


def _compressed_cap(limit: int) -> int:
    """The most compressed bytes read for a body that may inflate to ``limit``.

    Incompressible data grows by 5 bytes a 64 KiB stored block plus 18 a gzip member; this leaves
    room for that (and for many members), so no body within the limit is refused for its compressed size.
    """
    return limit + limit // 1024 + 64 * 1024


class _Inflater:
    """Decompresses a gzip or deflate body as it arrives, never producing more than ``limit`` bytes.

    gzip: every member of a multi-member body (RFC 1952), as Go's reader in the OTel Collector does;
    bytes after a member that do not start another are an error. deflate: the zlib format RFC 9110
    names, or a bare deflate stream as some clients send it.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        self._encoding = encoding
        self._limit = limit
        self._produced = 0
        self._stream: Any = None  # zlib.Decompress, made when the first bytes of each member arrive

    def feed(self, data: bytes) -> bytes:
        outs: list[bytes] = []
        while data:
            if self._stream is None or self._stream.eof:
                if self._stream is not None and self._encoding == "deflate":
                    raise PermanentError("the deflate body has bytes after its end")
                self._stream = zlib.decompressobj(self._window_bits(data))
            out = self._stream.decompress(data, self._limit + 1 - self._produced)
            self._produced += len(out)
            if self._produced > self._limit or self._stream.unconsumed_tail:
                raise TooLargeError(f"decompressed body exceeds the limit of {self._limit} bytes")
            outs.append(out)
            data = self._stream.unused_data if self._stream.eof else b""
        return b"".join(outs)

    def finish(self) -> None:
        """Raise PermanentError when the body stopped inside a stream (an empty body is an empty request)."""
        if self._stream is not None and not self._stream.eof:
            raise PermanentError(f"the {self._encoding} body is truncated")

    def _window_bits(self, head: bytes) -> int:
        if self._encoding != "deflate" or head[:2] == b"\x1f\x8b":
            return 16 + zlib.MAX_WBITS  # gzip header
        if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0:
            return zlib.MAX_WBITS  # zlib header
        return -zlib.MAX_WBITS  # bare deflate


#: (op, args, hangup) -> the answer's JSON body, ``{"result": ...}``, in pieces (StoreApi.call_json)
ApiHandler = Callable[[str, dict[str, Any], Hangup], list[bytes]]


async def _until_done_or_hung_up(request: Request, work: asyncio.Future[Any], hangup: Hangup) -> None:
    """Wait for ``work``; when the client of ``request`` (its body read) closes the connection first, or
    the server gives up on the request (a shutdown's grace period over), its reads are interrupted: a
    Ctrl-C'd runaway query must not keep a core busy up to the query time limit, nor hold up serve's exit."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        hangup.cancel()
        raise
    finally:
        gone.cancel()
    if not work.done() and gone.done() and not gone.cancelled() and gone.exception() is None:
        hangup.cancel()


def build_app(
    service: ExportService,
    *,
    metrics_text: Callable[[], bytes],
    ready: Callable[[], bool],
    api: ApiHandler,
    otlp: bool = True,
) -> Starlette:
    """The HTTP port's routes; ``otlp=False`` serves the query surface alone (the HTTP receiver is off)."""
    async def traces(request: Request) -> Response:
        if request.method != "POST":
            return refusal(405, code_pb2.UNIMPLEMENTED, "method not allowed: use POST /v1/traces",
                           _media_type(request), {"Allow": "POST"})
        started = time.perf_counter()
        try:
            return await export(request)
        finally:
            service.metrics.observe_request(time.perf_counter() - started)

    async def export(request: Request) -> Response:
        media_type = _media_type(request)
        try:  # a request without the token learns nothing else first, not even which body it should send
            service.authenticate(request.headers)
        except UnauthenticatedError as exc:
            service.metrics.request_refused(refusal_reason(exc))
            return error_response(exc, media_type if media_type in SUPPORTED else PROTOBUF)
        if media_type not in SUPPORTED:
            service.metrics.request_refused("unsupported_media_type")
            return PlainTextResponse(
                f"415 unsupported media type {media_type or '(none)'!r}: use {PROTOBUF} or {JSON}",
                status_code=415)
        try:
            with service.holding(0) as hold:
                body = await _read_body(request, service.max_request_size, hold)
                outcome = await run_in_threadpool(service.export_body, body, media_type)
        except ClientDisconnect:
            return Response(status_code=499)
        except ExportError as exc:
            service.metrics.request_refused(refusal_reason(exc))
            return error_response(exc, media_type)
        except Exception as exc:
            log.error("export failed: %s", type(exc).__name__)
            service.metrics.request_refused("internal")
            return error_response(exc, media_type)
        response = ExportTraceServiceResponse()
        if outcome.rejected:
            response.partial_success.rejected_spans = outcome.rejected
            response.partial_success.error_message = outcome.error_message
        return _encode(response, media_type)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    async def metrics(request: Request) -> Response:
        try:
            service.authenticate(request.headers)
        except UnauthenticatedError as exc:
            return PlainTextResponse(f"401 {exc}\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            body = await run_in_threadpool(metrics_text)
        except Exception as exc:  # e.g. the store is closing: say so instead of a 500 with a traceback
            log.warning("metrics scrape failed: %s", type(exc).__name__)
            return PlainTextResponse(f"503 metrics unavailable ({type(exc).__name__}); retry\n", status_code=503)
        return Response(body, headers={"Content-Type": CONTENT_TYPE})

    async def api_call(request: Request) -> Response:
        try:
            service.authorize_query(request.headers)
        except UnauthenticatedError as exc:
            return JSONResponse({"error": str(exc), "kind": "unauthenticated"}, status_code=401)
        op = request.path_params["op"]
        try:
            args = await request.json()
            if not isinstance(args, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            return JSONResponse({"error": f"bad request body: {exc}", "kind": "usage"}, status_code=400)
        try:
            hangup = Hangup()
            work = asyncio.ensure_future(run_in_threadpool(api, op, args, hangup))
            await _until_done_or_hung_up(request, work, hangup)
            result = await work
        except asyncio.CancelledError:  # serve's shutdown grace for open requests is over: uvicorn cancels the
            # call (its reads are interrupted) and would answer a bare "Internal Server Error"; say what happened
            return JSONResponse({"error": "serve is shutting down and stopped this call before it finished; run it "
                                 "again once serve has stopped (the CLI then opens the store itself)",
                                 "kind": "unavailable"}, status_code=503)
        except NotFoundError as exc:
            return JSONResponse({"error": str(exc), "kind": "not_found"}, status_code=404)
        except UsageError as exc:
            return JSONResponse({"error": str(exc), "kind": "usage"}, status_code=400)
        except Exception as exc:
            log.error("api %s failed: %s", op, type(exc).__name__)
            return JSONResponse({"error": f"internal error: {type(exc).__name__}", "kind": "internal"},
                                status_code=500)
        if len(result) == 1:
            return Response(result[0], media_type="application/json")

        async def pieces() -> AsyncIterator[bytes]:  # sent as the client reads: no copy of the whole answer
            for piece in result:
                yield piece
                await asyncio.sleep(0)  # a client gone meanwhile is noticed: no write after it (asyncio warns of each)

        return StreamingResponse(pieces(), media_type="application/json")

    async def not_found(request: Request, exc: Exception) -> Response:
        return refusal(404, code_pb2.NOT_FOUND, f"not found: {request.url.path} (OTLP traces go to POST /v1/traces)",
                       _media_type(request))

    surface = [Route("/api/{op}", api_call, methods=["POST"])]
    if not otlp:
        return Starlette(exception_handlers={404: not_found}, routes=surface)
    return Starlette(exception_handlers={404: not_found}, routes=[
        Route("/v1/traces", traces, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *surface,
    ])


