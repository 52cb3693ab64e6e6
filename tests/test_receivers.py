"""OTLP receivers end to end: the real OTel SDK exporters and hand-built requests against a real `serve`."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import threading
import time
import zlib

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)

from conftest import TESTDATA
from sdk_helpers import emit_agent_trace, sdk_tracer

NO_JUDGE = {"service": {"pipelines": {"traces": {"processors": []}}}}


def make_request(n_spans: int = 3, *, trace_id: bytes | None = None, pad: int = 0) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "hand-built"
    ss = rs.scope_spans.add()
    tid = trace_id or os.urandom(16)
    for i in range(n_spans):
        span = ss.spans.add(trace_id=tid, span_id=os.urandom(8), name=f"span-{i}",
                            start_time_unix_nano=1_795_300_000_000_000_000 + i,
                            end_time_unix_nano=1_795_300_001_000_000_000 + i)
        span.attributes.add(key="openinference.span.kind").value.string_value = "CHAIN"
        if pad:
            span.attributes.add(key="input.value").value.string_value = "x" * pad
    return req


def post(collector, body: bytes, content_type: str = "application/x-protobuf", **headers: str) -> httpx.Response:
    return httpx.post(f"{collector.http_url}/v1/traces", content=body,
                      headers={"content-type": content_type, **headers}, timeout=30)


# --------------------------------------------------------------------------- the real SDK


@pytest.mark.parametrize("transport,compression", [("grpc", None), ("grpc", "gzip"), ("http", None),
                                                   ("http", "gzip")])
def test_sdk_exporter_spans_are_stored(start_collector, transport, compression):
    c = start_collector(NO_JUDGE)
    endpoint = c.grpc_endpoint if transport == "grpc" else c.http_url
    with sdk_tracer(transport, endpoint, compression=compression) as tracer:
        trace_id = emit_agent_trace(tracer)
    rows = c.query(f"SELECT span_kind, name, service_name, session_id FROM spans WHERE trace_id = '{trace_id}' "
                   "ORDER BY start_time")
    assert [r["span_kind"] for r in rows] == ["AGENT", "RETRIEVER", "LLM", "TOOL", "LLM"]
    assert {r["service_name"] for r in rows} == {"test-agent"}
    assert rows[0]["session_id"] == "sess-1"


def test_flattened_openinference_keys_are_reachable_as_json_paths(start_collector):
    c = start_collector(NO_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, question="How do refunds work?")
    rows = c.query(
        "SELECT attributes->>'$.llm.input_messages[1].message.content' AS q, "
        "attributes->>'$.llm.output_messages[0].message.tool_calls[0].tool_call.function.name' AS tool "
        f"FROM spans WHERE trace_id = '{trace_id}' AND span_kind = 'LLM' AND tool_name IS NULL "
        "ORDER BY start_time LIMIT 1")
    assert rows == [{"q": "How do refunds work?", "tool": "lookup_order"}]


# --------------------------------------------------------------------------- OTLP/JSON and golden payloads


def test_otlp_json_golden_payload_fills_every_column(start_collector):
    c = start_collector(NO_JUDGE)
    body = (TESTDATA / "otlp_openinference.json").read_bytes()
    response = post(c, body, "application/json; charset=utf-8")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}
    rows = c.query("SELECT * FROM spans ORDER BY span_id")
    assert {r["trace_id"] for r in rows} == {"5b8efff798038103d269b633813fc60c"}
    expected = json.loads((TESTDATA / "otlp_openinference.expected.json").read_text())
    by_id = {r["span_id"]: r for r in rows}
    for want in expected:
        got = by_id[want["span_id"]]
        for key, value in want.items():
            assert got[key] == value, (want["span_id"], key)
    tool = by_id["eee19b7ec3c1b175"]
    events = json.loads(tool["events"]) if isinstance(tool["events"], str) else tool["events"]
    assert events[0]["name"] == "exception"
    assert events[0]["attributes"]["exception"]["message"] == "order service timed out"
    links = json.loads(tool["links"]) if isinstance(tool["links"], str) else tool["links"]
    assert links[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert links[0]["span_id"] == "b7ad6b7169203331"
    res = json.loads(tool["resource_attributes"])
    assert res["service"]["name"] == "golden-agent"
    genai = by_id["eee19b7ec3c1b176"]
    assert json.loads(genai["attributes"])["gen_ai"]["operation"]["name"] == "chat"


def test_protobuf_gzip_over_http_is_answered_in_protobuf(start_collector):
    c = start_collector(NO_JUDGE)
    req = make_request(4)
    response = post(c, gzip.compress(req.SerializeToString()), **{"content-encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(response.content) == ExportTraceServiceResponse()
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 4}]


def test_redelivered_span_is_stored_once(start_collector):
    c = start_collector(NO_JUDGE)
    body = make_request(3).SerializeToString()
    assert post(c, body).status_code == 200
    assert post(c, body).status_code == 200
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 3}]


# --------------------------------------------------------------------------- partial success


def test_bad_ids_are_rejected_one_by_one_through_partial_success(start_collector):
    c = start_collector(NO_JUDGE)
    req = make_request(2)
    spans = req.resource_spans[0].scope_spans[0].spans
    spans.add(trace_id=os.urandom(12), span_id=os.urandom(8), name="short trace id")
    spans.add(trace_id=bytes(16), span_id=os.urandom(8), name="zero trace id")
    spans.add(trace_id=os.urandom(16), span_id=bytes(8), name="zero span id")
    spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="backwards",
              start_time_unix_nano=2_000, end_time_unix_nano=1_000)
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(req, timeout=30)
    assert response.partial_success.rejected_spans == 4
    assert "trace_id must be 16 bytes, 32 hex characters in OTLP/JSON (got 12 bytes)" in response.partial_success.error_message
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 2}]


def test_an_exporters_kept_connection_is_still_open_when_its_next_batch_goes_out(start_collector):
    """The OTel SDKs' batch processors export every 5 s over one kept connection (Node's
    exporter-trace-otlp-proto / -http hold it in a keep-alive agent). The HTTP port closed a connection
    idle for 5 s, so the next export raced the close: a steady Node agent met a reset connection about
    once in twenty exports and waited a retry. A connection idle a little longer than the SDKs' interval
    still takes the next export, on the same socket."""
    c = start_collector(NO_JUDGE)
    conn = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=10)

    def export() -> int:
        conn.request("POST", "/v1/traces", body=make_request(1).SerializeToString(),
                     headers={"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        return response.status

    try:
        assert export() == 200
        kept = conn.sock
        time.sleep(6)  # the SDKs' 5 s interval, plus the time an export takes
        assert export() == 200
        assert conn.sock is kept
    finally:
        conn.close()
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 2}]


def test_partial_success_over_http_json(start_collector):
    c = start_collector(NO_JUDGE)
    doc = json.loads((TESTDATA / "otlp_openinference.json").read_text())
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "0000000000000000"
    response = post(c, json.dumps(doc).encode(), "application/json")
    assert response.status_code == 200
    body = response.json()
    assert int(body["partialSuccess"]["rejectedSpans"]) == 1
    assert "span_id is all zeros" in body["partialSuccess"]["errorMessage"]


def test_otlp_json_from_the_node_exporter_is_stored_as_its_protobuf_twin(start_collector):
    """@opentelemetry/exporter-trace-otlp-http (0.223) writes what JSON.stringify makes of JS values: an
    answer cut mid-emoji by String.slice keeps a lone surrogate (``\\ud83c``), NaN becomes
    ``{"doubleValue": null}``, and an integer past int64 stays an ``intValue`` (2**64). Its protobuf
    twin (exporter-trace-otlp-proto, the same span: testdata/js_exporter_quirks.js made both) sends
    U+FFFD and a double, and is stored. The JSON one must be too, with the same values, not refused
    whole with a 400 that the exporter drops, losing every span of the batch."""
    c = start_collector(NO_JUDGE)
    response = post(c, (TESTDATA / "js_exporter_quirks.json").read_bytes(), "application/json")
    assert response.status_code == 200, response.text
    twin = ExportTraceServiceRequest.FromString((TESTDATA / "js_exporter_quirks.pb").read_bytes())
    sent = {kv.key: kv.value for kv in twin.resource_spans[0].scope_spans[0].spans[0].attributes}
    rows = c.query("SELECT output_value, attributes FROM spans WHERE span_id = '6cd57bff041d4e0f'")
    assert len(rows) == 1
    attributes = json.loads(rows[0]["attributes"])
    assert rows[0]["output_value"] == sent["output.value"].string_value == "Your refund is on its way \ufffd"
    assert attributes["llm"]["output_messages"][0]["message"]["content"] == sent["output.value"].string_value
    assert attributes["cache"]["bytes_served"] == sent["cache.bytes_served"].double_value == 2.0 ** 64
    assert attributes["eval"]["score"] is None
    assert attributes["llm"]["token_count"]["total"] == 17


def test_a_lone_surrogate_in_raw_utf8_bytes_is_still_invalid_utf8(start_collector):
    """Only the JSON escape is repaired: the same code point written as raw (CESU-8) bytes is invalid
    UTF-8 and refuses the request whole, as DESIGN says."""
    c = start_collector(NO_JUDGE)
    body = (TESTDATA / "js_exporter_quirks.json").read_bytes().replace(b"\\ud83c", "\ud83c".encode("utf-8", "surrogatepass"))
    assert b"\\ud83c" not in body
    response = post(c, body, "application/json")
    assert response.status_code == 400
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 0}]


def test_base64_ids_as_message_to_json_writes_them_are_taken_and_other_ids_rejected_by_span(start_collector):
    """OTLP/JSON ids are hex; json_format.MessageToJson of a request writes base64. Base64 of the right
    length cannot be mistaken for hex (24 vs 32 characters), so such a request is stored, not refused
    span by span; an id that is neither is rejected alone, and the message says ids are hex."""
    c = start_collector(NO_JUDGE)
    req = make_request(3)
    doc = json.loads(json_format.MessageToJson(req))
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert len(spans[0]["traceId"]) == 24
    spans[2]["spanId"] = "not-an-id"
    response = post(c, json.dumps(doc).encode(), "application/json")
    assert response.status_code == 200
    assert int(response.json()["partialSuccess"]["rejectedSpans"]) == 1
    assert "16 hex characters in OTLP/JSON" in response.json()["partialSuccess"]["errorMessage"]
    stored = c.query("SELECT trace_id, span_id FROM spans ORDER BY span_id")
    sent = sorted((s.trace_id.hex(), s.span_id.hex()) for s in req.resource_spans[0].scope_spans[0].spans[:2])
    assert [(r["trace_id"], r["span_id"]) for r in stored] == sent


def test_a_link_whose_ids_are_not_ids_rejects_its_span_instead_of_storing_an_invented_id(start_collector):
    """A link's trace and span ids follow the id rules too (hex in OTLP/JSON, 16 / 8 bytes): a link id
    that is not hex was stored as "ff", an id nobody sent. Now its span is rejected alone, the message
    names the link, and a span whose links are well formed (or empty) is stored with them as sent."""
    c = start_collector(NO_JUDGE)
    req = make_request(4)
    good, empty_link, not_hex, short = req.resource_spans[0].scope_spans[0].spans
    linked_trace, linked_span = os.urandom(16), os.urandom(8)
    good.links.add(trace_id=linked_trace, span_id=linked_span)
    empty_link.links.add()
    not_hex.links.add(trace_id=linked_trace, span_id=linked_span)
    short.links.add(trace_id=linked_trace[:5], span_id=linked_span)
    doc = json.loads(json_format.MessageToJson(req))
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64decode(span[key]).hex()
        for link in span.get("links", []):
            for key in ("traceId", "spanId"):
                if key in link:
                    link[key] = base64.b64decode(link[key]).hex()
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][2]["links"][0]["traceId"] = "zz" * 16

    response = post(c, json.dumps(doc).encode(), "application/json")
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2
    assert "spans[2]: links[0].trace_id is not hex" in partial["errorMessage"]
    assert "spans[3]: links[0].trace_id must be empty or 16 bytes" in partial["errorMessage"]
    stored = {r["span_id"]: json.loads(r["links"]) for r in c.query("SELECT span_id, links FROM spans")}
    assert stored.keys() == {good.span_id.hex(), empty_link.span_id.hex()}
    assert [(lk["trace_id"], lk["span_id"]) for lk in stored[good.span_id.hex()]] == [(linked_trace.hex(),
                                                                                     linked_span.hex())]
    assert [(lk["trace_id"], lk["span_id"]) for lk in stored[empty_link.span_id.hex()]] == [("", "")]


def _length_delimited(field: int, payload: bytes) -> bytes:
    key, out = field << 3 | 2, b""
    for n in (key, len(payload)):
        while n > 0x7F:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        out += bytes([n])
    return out + payload


def test_spans_of_an_exporter_older_than_otlp_0_19_are_stored_not_silently_skipped(start_collector):
    """Before OTLP 0.19 spans came in ResourceSpans.instrumentation_library_spans (field 1000, JSON
    instrumentationLibrarySpans), reserved since: a current parser skips it, so an old exporter got
    200 / OK and nothing was stored. Those spans are read as scope spans, over both encodings."""
    c = start_collector(NO_JUDGE)
    legacy = make_request(2).resource_spans[0].scope_spans[0]
    legacy.scope.name, legacy.scope.version = "old.library", "0.9"  # InstrumentationLibrary: name 1, version 2
    current = make_request(1)
    resource_spans = current.resource_spans[0].SerializeToString() + _length_delimited(1000, legacy.SerializeToString())
    body = _length_delimited(1, resource_spans)
    channel = grpc.insecure_channel(c.grpc_endpoint)
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                 request_serializer=lambda b: b, response_deserializer=ExportTraceServiceResponse.FromString)
    assert export(body, timeout=10).ByteSize() == 0
    channel.close()

    old_json = json.loads(json_format.MessageToJson(make_request(1).resource_spans[0].scope_spans[0]))
    old_json["instrumentationLibrary"] = {"name": "old.json.library"}
    old_json["spans"][0]["traceId"] = base64.b64decode(old_json["spans"][0]["traceId"]).hex()
    old_json["spans"][0]["spanId"] = base64.b64decode(old_json["spans"][0]["spanId"]).hex()
    doc = {"resourceSpans": [{"resource": {}, "instrumentationLibrarySpans": [old_json]}]}
    response = post(c, json.dumps(doc).encode(), "application/json")
    assert response.status_code == 200 and response.json() == {}

    rows = c.query("SELECT span_id, scope_name, scope_version FROM spans")
    by_scope = sorted((r["scope_name"] or "", r["scope_version"] or "") for r in rows)
    assert by_scope == [("", ""), ("old.json.library", ""), ("old.library", "0.9"), ("old.library", "0.9")]
    sent = {s.span_id.hex() for s in [*legacy.spans, *current.resource_spans[0].scope_spans[0].spans]}
    assert sent | {old_json["spans"][0]["spanId"]} == {r["span_id"] for r in rows}


# --------------------------------------------------------------------------- bad input, one status each


def test_undecodable_protobuf_is_400_with_a_status_body(start_collector):
    c = start_collector(NO_JUDGE)
    response = post(c, b"\x0a\xff\xff\xff\xff\x0fnot a protobuf")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(response.content)
    assert "not a valid ExportTraceServiceRequest" in status.message


def test_malformed_json_is_400_answered_in_json(start_collector):
    c = start_collector(NO_JUDGE)
    response = post(c, b'{"resourceSpans": [', "application/json")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "not valid JSON" in response.json()["message"]


def test_invalid_utf8_in_a_string_field_is_400(start_collector):
    c = start_collector(NO_JUDGE)
    req = make_request(1)
    req.resource_spans[0].scope_spans[0].spans[0].name = "NAMEMARK"
    body = req.SerializeToString().replace(b"NAMEMARK", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8")
    assert post(c, body).status_code == 400
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 0}]


def test_unknown_path_is_404_and_wrong_method_is_405(start_collector):
    c = start_collector(NO_JUDGE)
    assert httpx.post(f"{c.http_url}/v1/logs", content=b"").status_code == 404
    response = httpx.get(f"{c.http_url}/v1/traces")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_unsupported_content_type_is_415(start_collector):
    c = start_collector(NO_JUDGE)
    assert post(c, b"hello", "text/plain").status_code == 415


def test_over_the_size_limit_is_413_even_when_gzipped(start_collector):
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_request_size": "64KiB"}}}})
    body = make_request(1, pad=200_000).SerializeToString()
    assert post(c, body).status_code == 413
    bomb = gzip.compress(body)
    assert len(bomb) < 64 * 1024
    assert post(c, bomb, **{"content-encoding": "gzip"}).status_code == 413
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 0}]


def test_every_member_of_a_concatenated_gzip_body_is_stored(start_collector):
    """RFC 1952: a gzip body is a series of members. Reading only the first answered 200 and dropped the rest."""
    c = start_collector(NO_JUDGE)
    bare = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # deflate without the zlib header, as some clients send it
    assert post(c, bare.compress(make_request(1).SerializeToString()) + bare.flush(),
                **{"content-encoding": "deflate"}).status_code == 200
    trace_id = os.urandom(16)
    body = b"".join(gzip.compress(make_request(2, trace_id=trace_id).SerializeToString()) for _ in range(3))
    response = post(c, body, **{"content-encoding": "gzip"})
    assert response.status_code == 200
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 7}]
    trailing = gzip.compress(make_request(1).SerializeToString()) + b"not gzip"
    assert post(c, trailing, **{"content-encoding": "gzip"}).status_code == 400
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 7}]


def test_an_empty_body_is_an_empty_request_whatever_its_type_or_encoding(start_collector):
    c = start_collector(NO_JUDGE)
    json_response = post(c, b"", "application/json")
    assert (json_response.status_code, json_response.headers["content-type"]) == (200, "application/json")
    assert json_response.json() == {}
    for encoding in ("gzip", "deflate"):
        response = post(c, b"", **{"content-encoding": encoding})
        assert (response.status_code, response.content) == (200, b""), encoding


def test_wrong_method_and_unknown_path_answer_a_status_encoded_like_the_request(start_collector):
    c = start_collector(NO_JUDGE)
    wrong_method = httpx.put(f"{c.http_url}/v1/traces", content=b"{}", headers={"content-type": "application/json"})
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.headers["content-type"] == "application/json"
    assert "POST" in wrong_method.json()["message"]
    not_found = httpx.post(f"{c.http_url}/v1/trace", content=b"", headers={"content-type": "application/x-protobuf"})
    assert (not_found.status_code, not_found.headers["content-type"]) == (404, "application/x-protobuf")
    assert "/v1/traces" in status_pb2.Status.FromString(not_found.content).message


def _request_of_exactly(size: int) -> bytes:
    """A request of ``size`` bytes whose padding is random bytes, so gzip makes it a little larger, not smaller."""
    req = make_request(1)
    value = req.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="blob").value
    value.bytes_value = os.urandom(size - req.ByteSize() - 16)
    while req.ByteSize() < size:
        value.bytes_value += os.urandom(size - req.ByteSize())
    while req.ByteSize() > size:
        value.bytes_value = value.bytes_value[:-1]
    assert req.ByteSize() == size
    return req.SerializeToString()


def test_the_size_limit_is_measured_after_decompression_on_the_compressed_side_too(start_collector):
    """A body at the limit whose gzip form is a few bytes over it is accepted; input that inflates
    to nothing is still not read without end."""
    limit = 64 * 1024
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_request_size": "64KiB"}}}})
    body = _request_of_exactly(limit)
    compressed = gzip.compress(body)
    assert len(compressed) > limit
    assert post(c, compressed, **{"content-encoding": "gzip"}).status_code == 200
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 1}]
    empty_blocks = b"\x00\x00\x00\xff\xff" * 60_000  # deflate stored blocks holding no data: 300 KB in, 0 out

    def chunked():  # no Content-Length: only the streaming cap can stop it
        yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        for i in range(0, len(empty_blocks), 65536):
            yield empty_blocks[i:i + 65536]
        yield b"\x03\x00" + bytes(8)

    assert post(c, chunked(), **{"content-encoding": "gzip"}).status_code == 413
    plain = post(c, iter([body, b"\x00"]))  # chunked, not compressed: one byte over
    assert plain.status_code == 413
    assert status_pb2.Status.FromString(plain.content).message == "request body exceeds the limit of 65536 bytes"


def test_grpc_undecodable_is_invalid_argument_and_oversize_is_resource_exhausted(start_collector):
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_request_size": "64KiB"}}}})
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as bad:
            raw(b"\x0a\xff\xff\xff\xff\x0fgarbage", timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as big:
            stub.Export(make_request(1, pad=200_000), timeout=10)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_default_grpc_limit_is_far_above_4_mib(start_collector):
    c = start_collector(NO_JUDGE)
    with grpc.insecure_channel(c.grpc_endpoint, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        response = trace_service_pb2_grpc.TraceServiceStub(ch).Export(make_request(2, pad=3_000_000), timeout=60)
    assert not response.HasField("partial_success")
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 2}]


# --------------------------------------------------------------------------- backpressure


def test_full_queue_throttles_with_retry_hints_and_loses_nothing(start_collector):
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_queued_spans": 20}}}})
    throttled: list[tuple[str, object]] = []
    trace_id = os.urandom(16)
    requests = [make_request(15, trace_id=trace_id, pad=20_000) for _ in range(24)]
    start_together = threading.Barrier(len(requests))
    delivered: list[str] = []      # a sender that gave up (or failed an assertion) is missing here
    deadline = time.monotonic() + 90  # retrying until then, not a fixed number of times: a loaded machine

    def send_grpc(req: ExportTraceServiceRequest) -> None:
        with grpc.insecure_channel(c.grpc_endpoint) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            start_together.wait(60)
            while time.monotonic() < deadline:
                try:
                    stub.Export(req, timeout=30)
                    delivered.append("grpc")
                    return
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    trailers = dict(exc.trailing_metadata() or ())
                    info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
                    rich = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
                    assert 0 < info.retry_delay.ToTimedelta().total_seconds() <= 5
                    assert rich.details
                    throttled.append(("grpc", info))
                    time.sleep(0.05)  # a real exporter waits the hint; a short pause keeps the test quick

    def send_http(req: ExportTraceServiceRequest) -> None:
        body = req.SerializeToString()
        start_together.wait(60)
        while time.monotonic() < deadline:
            response = post(c, body)
            if response.status_code == 200:
                delivered.append("http")
                return
            assert response.status_code == 503
            assert 1 <= int(response.headers["retry-after"]) <= 5
            throttled.append(("http", response.headers["retry-after"]))
            time.sleep(0.05)

    threads = [threading.Thread(target=send_grpc if i % 2 else send_http, args=(r,))
               for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(delivered) == len(requests)
    assert throttled, "24 concurrent requests of 15 spans against a 20-span queue must be throttled"
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 24 * 15}]


def test_retry_hints_near_the_cap_stay_spread_not_clipped_to_5s(start_collector):
    """The hint is retry_after stretched at random by up to 2x, at most 5 s, so that clients refused together
    come back at different times. It was clipped to 5 s after the draw: with ``retry_after: 4s`` three
    gRPC clients in four were told exactly 5.0 s, and the OTel exporter waits exactly the hint."""
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_queued_spans": 20, "retry_after": "4s"}}}})
    requests = [make_request(15, pad=20_000) for _ in range(16)]
    start_together = threading.Barrier(len(requests))
    hints: list[float] = []

    def send(req: ExportTraceServiceRequest) -> None:
        with grpc.insecure_channel(c.grpc_endpoint) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            start_together.wait(60)
            try:
                stub.Export(req, timeout=30)
            except grpc.RpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())
                info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
                hints.append(info.retry_delay.ToTimedelta().total_seconds())

    threads = [threading.Thread(target=send, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(hints) >= 5, hints  # 16 requests of 15 spans at once against a 20-span queue
    assert all(4 <= hint <= 5 for hint in hints), hints
    assert len(set(hints)) == len(hints), f"clients told to come back at the same moment: {sorted(hints)}"


# --------------------------------------------------------------------------- auth


def test_bearer_token_guards_ingest_metrics_and_queries(start_collector):
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"auth": {"bearer_token": "${env:TS_TEST_TOKEN}"}}}},
                        env={"TS_TEST_TOKEN": "s3cret-token-value"})
    body = make_request(2).SerializeToString()
    assert post(c, body).status_code == 401
    assert post(c, body, authorization="Bearer wrong").status_code == 401
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        with pytest.raises(grpc.RpcError) as denied:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(make_request(1), timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert httpx.get(f"{c.http_url}/healthz").status_code == 200
    assert httpx.get(f"{c.http_url}/metrics").status_code == 401
    assert post(c, body, authorization="Bearer s3cret-token-value").status_code == 200
    refused = c.cli("query", "SELECT count(*) FROM spans")
    assert refused.returncode == 2 and "TRACESIEVE_TOKEN" in refused.stderr
    ok = c.cli("query", "SELECT count(*) AS n FROM spans", "--format", "json",
               env={"TRACESIEVE_TOKEN": "s3cret-token-value"})
    assert json.loads(ok.stdout) == [{"n": 2}]
    assert "s3cret-token-value" not in c.log()


# --------------------------------------------------------------------------- empty requests (metrics: test_metrics.py)


def test_empty_request_is_full_success_on_both_transports(start_collector):
    c = start_collector(NO_JUDGE)
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(ExportTraceServiceRequest(), timeout=10)
    assert response.SerializeToString() == b""
    http_response = post(c, b"{}", "application/json")
    assert http_response.status_code == 200 and http_response.json() == {}


# --------------------------------------------------------------------------- per-span limits


def test_per_span_limits_cut_drop_and_mark(start_collector):
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {
        "max_attributes_per_span": 4, "max_value_size": "1KiB", "max_nesting_depth": 2}}}})
    req = make_request(1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.dropped_attributes_count = 3
    span.attributes.add(key="input.value").value.string_value = "é" * 1000  # 2000 bytes in UTF-8
    deep = span.attributes.add(key="deep").value
    deep.kvlist_value.values.add(key="level1").value.kvlist_value.values.add(key="level2").value.string_value = "x"
    for i in range(5):
        span.attributes.add(key=f"extra.{i}").value.int_value = i
    assert post(c, req.SerializeToString()).status_code == 200
    row = c.query("SELECT input_value, attributes, dropped_attributes_count FROM spans")[0]
    assert row["input_value"].startswith("é" * 512)
    assert row["input_value"].endswith("…[truncated 976 bytes]")
    attrs = json.loads(row["attributes"])
    assert attrs["deep"] == {"level1": "[too deep]"}
    assert set(attrs) == {"openinference", "input", "deep", "extra"} and attrs["extra"] == [0]
    assert row["dropped_attributes_count"] == 3 + 4


def test_max_value_size_cuts_the_scope_name_version_and_trace_states_too(start_collector):
    """"A string over max_value_size is cut": the span's name, status and every attribute were, but the scope's
    name and version and the span's and its links' trace_state were stored whole, however long."""
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_value_size": 100}}}})
    req = make_request(1)
    scope_spans = req.resource_spans[0].scope_spans[0]
    scope_spans.scope.name, scope_spans.scope.version = "s" * 300, "1." * 100
    span = scope_spans.spans[0]
    span.trace_state = "vendor=" + "é" * 100  # 207 bytes in UTF-8
    span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8), trace_state="k=" + "v" * 148)
    assert post(c, req.SerializeToString()).status_code == 200
    row = c.query("SELECT scope_name, scope_version, trace_state, links->>'$[0].trace_state' AS link_state FROM spans")[0]
    assert row == {"scope_name": "s" * 100 + "…[truncated 200 bytes]",
                   "scope_version": "1." * 50 + "…[truncated 100 bytes]",
                   "trace_state": "vendor=" + "é" * 46 + "…[truncated 108 bytes]",  # never half a character
                   "link_state": "k=" + "v" * 98 + "…[truncated 50 bytes]"}


def test_max_value_size_cuts_attribute_keys_too(start_collector):
    """Keys were stored whole: a span with a 2 MiB attribute key (or kvlist key) kept all of it, past a
    1 MiB max_value_size."""
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_value_size": 100}}}})
    req = make_request(1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="k" * 300).value.string_value = "first"
    span.attributes.add(key="k" * 300).value.string_value = "a duplicate key: the first one wins"
    span.attributes.add(key="k" * 400).value.string_value = "a longer key, cut to a key of its own"
    inner = span.attributes.add(key="doc").value.kvlist_value.values.add(key="é" * 80)  # 160 bytes in UTF-8
    inner.value.int_value = 7
    assert post(c, req.SerializeToString()).status_code == 200
    attrs = json.loads(c.query("SELECT attributes FROM spans")[0]["attributes"])
    assert attrs["k" * 100 + "…[truncated 200 bytes]"] == "first"
    assert "k" * 100 + "…[truncated 300 bytes]" in attrs  # a different length cut is a different key
    assert attrs["doc"] == {"é" * 50 + "…[truncated 60 bytes]": 7}
    assert max(len(key) for key in attrs) < 130


def test_a_value_no_typed_column_can_hold_never_fails_the_request(start_collector):
    """Token counts past BIGINT, digits int() refuses (superscripts) in a count or a key segment: the
    span is stored with the typed column empty and the value in attributes. Each used to fail the
    whole request with a 500, which clients do not retry: the request's good spans were lost too."""
    c = start_collector(NO_JUDGE)
    odd = {"llm.token_count.prompt": 1e300, "llm.token_count.completion": "9" * 40,
           "llm.token_count.total": "\u00b2", "llm.input_messages.\u00b2.message.role": "user"}
    req = make_request(len(odd) + 1)
    spans = req.resource_spans[0].scope_spans[0].spans
    for span, (key, value) in zip(spans, odd.items()):
        attr = span.attributes.add(key=key).value
        if isinstance(value, float):
            attr.double_value = value
        else:
            attr.string_value = value
    response = post(c, req.SerializeToString())
    assert (response.status_code, response.content) == (200, b"")
    rows = c.query("SELECT llm_token_count_prompt AS p, llm_token_count_completion AS c, llm_token_count_total AS t, "
                   "attributes FROM spans ORDER BY name")
    assert len(rows) == len(odd) + 1
    assert all(r["p"] is None and r["c"] is None and r["t"] is None for r in rows)
    assert json.loads(rows[3]["attributes"])["llm"]["input_messages"] == {"\u00b2": {"message": {"role": "user"}}}


def _nested(levels: int, kind: str) -> ExportTraceServiceRequest:
    """One span whose attribute ``deep`` nests ``levels`` key-value lists (or arrays), one event likewise."""
    req = make_request(1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="kept").value.string_value = "fine"
    for holder in (span.attributes, span.events.add(name="e", time_unix_nano=1_795_300_000_000_000_000).attributes):
        value = holder.add(key="deep").value
        for i in range(levels):
            value = value.kvlist_value.values.add(key=f"l{i}").value if kind == "kvlist" else \
                value.array_value.values.add()
        value.string_value = "the bottom"
    return req


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@pytest.mark.parametrize("transport,levels,kind", [
    (transport, levels, kind) for transport in ("grpc", "http-protobuf", "http-json")
    for levels, kind in ((40, "kvlist"), (300, "kvlist"), (60, "array"))
    if not (transport == "http-json" and levels > 100)  # Python's JSON encoder cannot write that deep
])
def test_a_value_nested_past_what_protobuf_parses_is_stored_as_too_deep(start_collector, transport, levels, kind):
    """protobuf refuses messages nested over 100 levels (a key-value list is three): such a request
    used to fail whole as undecodable, whatever max_nesting_depth said."""
    c = start_collector(NO_JUDGE)
    req = _nested(levels, kind)
    if transport == "grpc":
        with grpc.insecure_channel(c.grpc_endpoint) as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(req, timeout=30)
    else:
        if transport == "http-json":
            doc = json_format.MessageToDict(req)
            for s in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
                s["traceId"], s["spanId"] = os.urandom(16).hex(), os.urandom(8).hex()
            body, content_type = json.dumps(doc).encode(), "application/json"
        else:
            body, content_type = req.SerializeToString(), "application/x-protobuf"
        response = post(c, body, content_type)
        assert response.status_code == 200, response.text
    row = c.query("SELECT attributes, events FROM spans")[0]
    attrs = json.loads(row["attributes"])
    assert attrs["kept"] == "fine"
    assert "[too deep]" in json.dumps(attrs["deep"]) and _depth(attrs["deep"]) == 31  # max_nesting_depth 32
    assert "[too deep]" in row["events"] and "the bottom" not in row["events"]


def test_a_value_cut_at_the_size_limit_never_keeps_part_of_a_pii_value(start_collector):
    """The cut comes before the pii processor: half an SSN or card number would not be found any more."""
    c = start_collector({"receivers": {"otlp": {"limits": {"max_value_size": "100B"}}},
                         "service": {"pipelines": {"traces": {"processors": ["pii"]}}}})
    req = make_request(1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    pii = {"ssn": "123-45-6789", "card": "4111 1111 1111 1111", "email": "jonathan.livingston@example.com",
           "key": "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"}
    for name, value in pii.items():
        span.attributes.add(key=f"note.{name}").value.string_value = "x" * 92 + " " + value + " and more text"
    span.attributes.add(key="note.plain").value.string_value = "a" * 300
    assert post(c, req.SerializeToString()).status_code == 200
    notes = json.loads(c.query("SELECT attributes FROM spans")[0]["attributes"])["note"]
    for name, value in pii.items():
        assert notes[name] == "x" * 92 + " …[truncated {} bytes]".format(len(value) + 14), name
    assert notes["plain"] == "a" * 100 + "…[truncated 200 bytes]"  # nothing to move the cut for


def test_a_single_request_larger_than_the_queue_is_accepted_when_nothing_is_queued(start_collector):
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_queued_spans": 5}}}})
    assert post(c, make_request(40).SerializeToString()).status_code == 200
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 40}]
