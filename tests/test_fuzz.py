"""Hostile input: the OTLP decoders and both receivers answer every payload with success or a clear refusal.

In process (fast, many examples): arbitrary bytes, truncated and bit-flipped
requests, deeply nested kvlist/array values, huge attribute counts, many-dot
keys, invalid UTF-8 and hostile JSON go through ``parse_protobuf`` /
``parse_json`` -> ``decode_request`` -> the ``pii`` processor. The only
exception allowed is PermanentError, and whatever is accepted satisfies the
stored-row invariants. End to end (fewer examples): the same kinds of bodies
against a real `serve` over HTTP (protobuf and JSON) and gRPC, every answer a
clear status, the server healthy afterwards, no garbage and no canary stored.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from proc_helpers import rss_kib
from test_pii_canary import CANARIES, MUST_NOT_APPEAR, assert_no_canary
from tracesieve.collector.config import load_config
from tracesieve.collector.decode import DecodeLimits, DecodeResult, decode_request, parse_json, parse_protobuf
from tracesieve.storage.errors import PermanentError

LIMITS = DecodeLimits(max_attributes_per_span=64, max_value_size=2048, max_nesting_depth=8)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)
HEX32, HEX16 = re.compile(r"[0-9a-f]{32}\Z"), re.compile(r"[0-9a-f]{16}\Z")
MARKER = re.compile(r"…\[truncated \d+ bytes\]\Z")
JSON_COLUMNS = ("attributes", "resource_attributes", "events", "links")
PII = load_config(None).span_processors  # the built-in pii processor, as `serve` builds it


# --------------------------------------------------------------------------- what "no garbage" means


def check_batch(batch: pa.Table, limits: DecodeLimits = LIMITS) -> None:
    """Every accepted row is well formed: hex ids, valid JSON columns, strings within the value limit."""
    for row in batch.to_pylist():
        assert HEX32.match(row["trace_id"]) and row["trace_id"] != "0" * 32, row["trace_id"]
        assert HEX16.match(row["span_id"]) and row["span_id"] != "0" * 16, row["span_id"]
        assert row["parent_span_id"] is None or HEX16.match(row["parent_span_id"])
        for column in JSON_COLUMNS:
            json.loads(row[column])
        for link in json.loads(row["links"]):  # a link id is the one sent, or empty; never invented
            assert link["trace_id"] == "" or HEX32.match(link["trace_id"]), link
            assert link["span_id"] == "" or HEX16.match(link["span_id"]), link
        for column in ("name", "input_value", "output_value", "status_message"):
            value = row[column]
            if isinstance(value, str) and len(value.encode()) > limits.max_value_size:
                assert MARKER.search(value), f"{column} over the limit without the truncation marker"
        assert depth(json.loads(row["attributes"])) <= 2 * limits.max_nesting_depth + 1


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def decode_or_refuse(body: bytes, media_type: str = "protobuf") -> DecodeResult | None:
    """The whole in-process path; None when refused as a whole (the only allowed exception)."""
    try:
        request = parse_json(body) if media_type == "json" else parse_protobuf(body)
        result = decode_request(request, LIMITS)
    except PermanentError as exc:
        assert str(exc)
        return None
    batch = result.batch
    for proc in PII:
        batch = proc.process(batch)
    check_batch(batch)
    return result


# --------------------------------------------------------------------------- payload builders


def base_request(n_spans: int = 2, text: str = "hello") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "fuzz"
    ss = rs.scope_spans.add()
    for i in range(n_spans):
        span = ss.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"s{i}",
                            start_time_unix_nano=1_795_300_000_000_000_000,
                            end_time_unix_nano=1_795_300_001_000_000_000)
        span.attributes.add(key="input.value").value.string_value = f"{text} {CANARIES['EMAIL']}"
    return req


def nested_value(target: AnyValue, shape: list[str], leaf: str) -> None:
    """Fill ``target`` with kvlist/array levels as ``shape`` says, innermost a string."""
    for kind in shape:
        if kind == "kv":
            target = target.kvlist_value.values.add(key="k").value
        else:
            target = target.array_value.values.add()
    target.string_value = leaf


scalars = st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.floats(allow_nan=True), st.none())
any_json = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=25)
hex_or_junk = st.one_of(st.text("0123456789abcdef", min_size=0, max_size=40), st.text(max_size=20), st.integers())
otlp_value = st.recursive(
    st.one_of(st.builds(lambda s: {"stringValue": s}, st.text(max_size=60)),
              st.builds(lambda i: {"intValue": i}, st.one_of(st.integers(), st.text(max_size=8))),
              st.builds(lambda d: {"doubleValue": d}, st.one_of(st.floats(), st.text(max_size=5))),
              st.builds(lambda b: {"bytesValue": b}, st.text(max_size=12)), any_json),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"arrayValue": {"values": xs}}, st.lists(inner, max_size=3)),
        st.builds(lambda kvs: {"kvlistValue": {"values": [{"key": k, "value": v} for k, v in kvs]}},
                  st.lists(st.tuples(st.text(max_size=10), inner), max_size=3))),
    max_leaves=30)
otlp_span = st.fixed_dictionaries({
    "traceId": hex_or_junk, "spanId": hex_or_junk,
    "name": st.one_of(st.text(max_size=30), any_json),
    "startTimeUnixNano": st.one_of(st.integers(min_value=-1, max_value=2**64 + 1), st.text(max_size=25)),
    "endTimeUnixNano": st.one_of(st.integers(min_value=0, max_value=2**64 - 1), st.text("0123456789", max_size=21)),
    "attributes": st.lists(st.fixed_dictionaries({"key": st.text(max_size=40), "value": otlp_value}), max_size=8),
}, optional={"kind": any_json, "status": any_json, "events": any_json, "links": any_json})
otlp_json = st.builds(lambda spans, extra: {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}], **extra},
                      st.lists(otlp_span, max_size=4), st.dictionaries(st.text(max_size=8), any_json, max_size=2))


@st.composite
def hostile_protobuf(draw: st.DrawFn) -> bytes:
    """A valid request bent one way: truncated, bit-flipped, deeply nested, many attributes or bad UTF-8."""
    req = base_request(draw(st.integers(1, 3)))
    span = req.resource_spans[0].scope_spans[0].spans[0]
    how = draw(st.sampled_from(["truncate", "flip", "nest", "many", "utf8", "dots", "big", "ids"]))
    if how == "nest":
        shape = draw(st.lists(st.sampled_from(["kv", "arr"]), min_size=1, max_size=40))
        nested_value(span.attributes.add(key="deep").value, shape, CANARIES["EMAIL"])
    elif how == "many":
        for i in range(draw(st.integers(60, 3000))):
            span.attributes.add(key=f"a.{i}").value.int_value = i
    elif how == "dots":
        span.attributes.add(key=".".join(draw(st.lists(st.sampled_from(["a", "0", "", "7"]), min_size=2,
                                                       max_size=400)))).value.string_value = "v"
    elif how == "big":
        span.attributes.add(key="output.value").value.string_value = draw(st.sampled_from(["é", "x", "😀"])) * 5000
    elif how == "ids":
        span.trace_id = draw(st.binary(max_size=20))
        span.span_id = draw(st.binary(max_size=10))
        span.parent_span_id = draw(st.binary(max_size=10))
        span.end_time_unix_nano = draw(st.integers(0, 2**64 - 1))
    body = req.SerializeToString()
    if how == "truncate":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(body) - 1))
            body = body[:pos] + bytes([body[pos] ^ draw(st.integers(1, 255))]) + body[pos + 1:]
    elif how == "utf8":
        body = body.replace(CANARIES["EMAIL"].encode(), draw(st.sampled_from(
            [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80abc", b"ok\xe2\x82"])), 1)
    return body


# --------------------------------------------------------------------------- in process: many examples


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_decoded_or_refused(body):
    decode_or_refuse(body)


@FUZZ
@given(hostile_protobuf())
def test_bent_protobuf_requests_are_decoded_or_refused(body):
    decode_or_refuse(body)


@settings(FUZZ, max_examples=60)
@given(otlp_json)
def test_hostile_otlp_json_is_decoded_or_refused(doc):
    decode_or_refuse(json.dumps(doc).encode(), "json")


@FUZZ
@given(st.one_of(st.binary(max_size=512), any_json.map(lambda d: json.dumps(d).encode())))
def test_arbitrary_json_bodies_are_decoded_or_refused(body):
    decode_or_refuse(body, "json")


@pytest.mark.parametrize("body", [
    b"[" * 200_000 + b"]" * 200_000,
    b'{"resourceSpans":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
], ids=["deep-array", "deep-resource-spans"])
def test_absurdly_deep_json_is_refused_not_a_crash(body):
    assert decode_or_refuse(body, "json") is None


def test_an_attribute_nested_200_lists_deep_is_kept_as_too_deep_not_refused():
    body = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + b"ab" * 16 + b'","spanId":"' + b"cd" * 8
            + b'","attributes":[{"key":"a","value":' + b'{"kvlistValue":{"values":[{"key":"k","value":' * 200
            + b'{"stringValue":"x"}' + b"}]}}" * 200 + b"}]}]}]}]}")
    result = decode_or_refuse(body, "json")
    assert result is not None and result.rejected == 0
    assert "[too deep]" in result.batch.column("attributes")[0].as_py()


def test_many_dot_keys_nest_no_deeper_than_the_limit():
    req = base_request(1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key=".".join(["a"] * 5000)).value.string_value = "v"
    span.attributes.add(key=".".join(["0"] * 5000)).value.string_value = "w"
    result = decode_or_refuse(req.SerializeToString())
    assert result is not None and result.batch.num_rows == 1


def test_json_parse_errors_name_the_field_never_the_value():
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab" * 16, "spanId": "cd" * 8,
                                                         "startTimeUnixNano": CANARIES["EMAIL"]}]}]}]}
    with pytest.raises(PermanentError) as refused:
        parse_json(json.dumps(doc).encode())
    assert "startTimeUnixNano" in str(refused.value)
    assert CANARIES["EMAIL"] not in str(refused.value)


# --------------------------------------------------------------------------- end to end: fewer examples


E2E = settings(FUZZ, max_examples=25)
LIMITED = {"receivers": {"otlp": {"limits": {"max_request_size": "256KiB", "max_attributes_per_span": 64,
                                             "max_value_size": "2KiB", "max_nesting_depth": 8}}},
           "service": {"span_workers": 1, "pipelines": {"traces": {"processors": ["pii"]}}}}
HTTP_OK = {200, 400, 413}
GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_hostile_requests_against_a_real_server_get_clear_answers_and_store_no_garbage(start_collector):
    c = start_collector(LIMITED)
    url = f"{c.http_url}/v1/traces"
    answers: list[bytes] = []
    with httpx.Client(timeout=30) as client, grpc.insecure_channel(c.grpc_endpoint) as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)

        def over_http(body: bytes, media_type: str, **headers: str) -> None:
            r = client.post(url, content=body, headers={"content-type": media_type, **headers})
            assert r.status_code in HTTP_OK, (r.status_code, r.text[:300])
            answers.append(r.content)

        def over_grpc(body: bytes) -> None:
            try:
                answers.append(raw(body, timeout=30))
            except grpc.RpcError as exc:
                assert exc.code() in GRPC_OK, (exc.code(), exc.details())
                answers.append((exc.details() or "").encode())

        @E2E
        @given(hostile_protobuf())
        def protobuf_both_ways(body):
            over_http(body, "application/x-protobuf")
            over_grpc(body)

        @E2E
        @given(st.one_of(otlp_json.map(lambda d: json.dumps(d).encode()), st.binary(max_size=300)))
        def json_over_http(body):
            over_http(body, "application/json")

        protobuf_both_ways()
        json_over_http()
        # the cases that once reached the server as 500s: absurd JSON depth, keys of thousands of dots
        over_http(b"[" * 100_000 + b"]" * 100_000, "application/json")
        dotted = base_request(1)
        dotted.resource_spans[0].scope_spans[0].spans[0].attributes.add(
            key=".".join(["a"] * 5000)).value.string_value = CANARIES["EMAIL"]
        over_http(dotted.SerializeToString(), "application/x-protobuf")
        over_grpc(dotted.SerializeToString())
        # a truncated gzip stream, a non-gzip body that says gzip, and a gzip bomb
        good = base_request(2).SerializeToString()
        over_http(gzip.compress(good)[:-12], "application/x-protobuf", **{"content-encoding": "gzip"})
        over_http(b"not gzip at all", "application/x-protobuf", **{"content-encoding": "gzip"})
        over_http(_gzip_zeros(256 << 20), "application/x-protobuf", **{"content-encoding": "gzip"})
        assert client.get(f"{c.http_url}/healthz").status_code == 200

    assert c.proc.poll() is None, "the collector died"
    rows = c.query("SELECT trace_id, span_id, attributes, resource_attributes, events, links FROM spans")
    assert rows, "some fuzz cases are valid and must have been stored"
    for row in rows:
        assert HEX32.match(row["trace_id"]) and HEX16.match(row["span_id"])
        for column in JSON_COLUMNS:
            json.loads(row[column])
    for answer in answers:
        assert_no_canary(answer, "an answer to a hostile request")
    assert c.stop() == 0
    log = c.log()
    assert "Traceback" not in log and "export failed" not in log
    assert_no_canary(log.encode(), "the server log after fuzzing")
    assert_no_canary(c.db_path.read_bytes(), "the database file after fuzzing")
    wal = c.db_path.with_name(c.db_path.name + ".wal")
    if wal.exists():
        assert_no_canary(wal.read_bytes(), "the WAL after fuzzing")
    assert MUST_NOT_APPEAR


def _gzip_zeros(size: int) -> bytes:
    """``size`` zero bytes gzipped, built a chunk at a time (about size/1000 bytes on the wire)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    out = [squeeze.compress(chunk) for _ in range(size >> 20)]
    out.append(squeeze.flush())
    return b"".join(out)


def test_gzip_bomb_is_refused_without_inflating_it(start_collector):
    c = start_collector({"receivers": {"otlp": {"limits": {"max_request_size": "8MiB"}}},
                         "service": {"span_workers": 0, "pipelines": {"traces": {"processors": []}}}})
    bomb = _gzip_zeros(256 << 20)  # 256 MiB inflated, about 256 KiB sent
    assert len(bomb) < 1 << 20
    before = rss_kib(c.proc.pid, "VmHWM")
    r = httpx.post(f"{c.http_url}/v1/traces", content=bomb, timeout=60,
                   headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"})
    assert r.status_code == 413
    grown = rss_kib(c.proc.pid, "VmHWM") - before
    assert grown < 64 * 1024, f"the collector's peak memory grew {grown // 1024} MiB on a refused gzip bomb"
    # gRPC: a message compressed on the wire is also measured after decompression
    big = base_request(1)
    big.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="pad").value.string_value = "z" * (16 << 20)
    with grpc.insecure_channel(c.grpc_endpoint, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as refused:
            raw(big.SerializeToString(), timeout=60, compression=grpc.Compression.Gzip)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert httpx.get(f"{c.http_url}/healthz").status_code == 200
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 0}]
