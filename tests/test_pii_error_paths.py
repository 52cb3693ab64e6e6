"""The PII guarantee on error paths: refused and rejected requests echo no canary and leave none behind.

Every refusal kind carries the canaries in its payload: 400 (bad JSON field,
invalid UTF-8, absurd nesting), 401, 413, partial_success rejections, and the
same over gRPC. Neither the answers (which exporters log), nor the server log,
nor the database and its WAL may hold a canary afterwards.
"""

from __future__ import annotations

import json
import os

import grpc
import httpx
from google.rpc import status_pb2

from test_pii_canary import CANARIES, assert_no_canary, text_with_all
from test_receivers import make_request

CONFIG = {"receivers": {"otlp": {"auth": {"api_key": "error-path-key-71b3"},
                                 "limits": {"max_request_size": "128KiB"}}},
          "service": {"span_workers": 1, "pipelines": {"traces": {"processors": ["pii"]}}}}
AUTH = {"x-api-key": "error-path-key-71b3"}


def canary_span_json(**overrides: object) -> dict:
    span = {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": CANARIES["EMAIL"],
            "startTimeUnixNano": "1795300000000000000", "endTimeUnixNano": "1795300001000000000",
            "attributes": [{"key": "input.value", "value": {"stringValue": text_with_all()}}]}
    span.update(overrides)
    return span


def doc(*spans: dict) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}).encode()


def test_refusals_and_rejections_echo_and_keep_no_canary(start_collector):
    c = start_collector(CONFIG)
    url = f"{c.http_url}/v1/traces"
    answers: list[tuple[int, bytes]] = []
    messages: list[str] = []

    def send(body: bytes, media_type: str = "application/json", auth: bool = True) -> None:
        headers = {"content-type": media_type, **(AUTH if auth else {})}
        r = httpx.post(url, content=body, headers=headers, timeout=30)
        answers.append((r.status_code, r.content))
        if r.status_code != 200:  # the google.rpc.Status body, encoded like the request
            status = status_pb2.Status.FromString(r.content) if media_type.endswith("protobuf") else None
            messages.append(status.message if status else r.json()["message"])

    # 400: a value of the wrong type, in the JSON the exporter logs back (unknown enum names are ignored)
    for field in ("startTimeUnixNano", "kind", "droppedAttributesCount"):
        send(doc(canary_span_json(**{field: CANARIES["EMAIL"]})))
    send(doc(canary_span_json(attributes=[{"key": "n", "value": {"intValue": CANARIES["PHONE"]}}])))
    send(doc(canary_span_json(status={"code": CANARIES["SSN"], "message": CANARIES["CARD"]})))
    send(b'{"resourceSpans": [' + CANARIES["API_KEY"].encode() + b"]}")  # not JSON at all
    send(b'{"a":' * 5000 + json.dumps(CANARIES["EMAIL"]).encode() + b"}" * 5000)
    bad_utf8 = make_request(1)
    bad_utf8.resource_spans[0].scope_spans[0].spans[0].name = "MARK " + text_with_all()
    send(bad_utf8.SerializeToString().replace(b"MARK", b"\xff\xfe\xfd\xfc"), "application/x-protobuf")
    # 401 and 413 carrying canaries
    send(doc(canary_span_json()), auth=False)
    send(doc(*[canary_span_json() for _ in range(250)]))
    # partial success: spans rejected one by one, with canaries in every field
    send(doc(canary_span_json(traceId=CANARIES["EMAIL"]), canary_span_json(spanId="00" * 8),
             canary_span_json(startTimeUnixNano="1795300009000000000")))
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for body, metadata in ((bad_utf8.SerializeToString().replace(b"MARK", b"\xff\xfe\xfd\xfc"), AUTH),
                               (make_request(1, pad=10).SerializeToString() + CANARIES["EMAIL"].encode(), AUTH),
                               (make_request(1).SerializeToString(), {})):
            try:
                answers.append((0, raw(body, metadata=tuple(metadata.items()), timeout=30)))
            except grpc.RpcError as exc:
                answers.append((exc.code().value[0], (exc.details() or "").encode()))

    statuses = sorted({status for status, _ in answers})
    assert {400, 401, 413, 200} <= set(statuses), statuses
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] in statuses
    assert grpc.StatusCode.UNAUTHENTICATED.value[0] in statuses
    partial = json.loads(answers[-4][1])
    assert int(partial["partialSuccess"]["rejectedSpans"]) == 3, partial
    for _, body in answers:
        assert_no_canary(body, "an error answer")
    assert len(messages) == 8 and all(messages), f"every refusal says what was wrong: {messages}"

    # nothing from the refused or rejected requests was stored; the two spans whose unknown enum names
    # (kind, status.code) are ignored as OTLP/JSON allows were stored, redacted
    stored = c.cli("query", "SELECT count(*) AS n FROM spans", "--format", "json",
                   env={"TRACESIEVE_TOKEN": AUTH["x-api-key"]})
    assert json.loads(stored.stdout) == [{"n": 2}], stored.stderr
    dump = c.cli("query", "SELECT * FROM spans", "--format", "json", env={"TRACESIEVE_TOKEN": AUTH["x-api-key"]})
    assert dump.returncode == 0 and "<EMAIL>" in dump.stdout
    assert_no_canary(dump.stdout.encode(), "the stored spans")
    assert c.stop() == 0
    log = c.log()
    assert_no_canary(log.encode(), "the server log")
    assert "Traceback" not in log
    assert_no_canary(c.db_path.read_bytes(), "the database file")
    wal = c.db_path.with_name(c.db_path.name + ".wal")
    if wal.exists():
        assert_no_canary(wal.read_bytes(), "the WAL")
