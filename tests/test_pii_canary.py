"""No unredacted byte reaches the database, its WAL or the logs: canaries through both receivers."""

from __future__ import annotations

import json
import os
from pathlib import Path

from opentelemetry.trace import Status, StatusCode

from conftest import FAST_JUDGE
from sdk_helpers import sdk_tracer
from test_receivers import post

# One canary per structured type; each is unique so a hit anywhere is unambiguous.
CANARIES = {
    "EMAIL": "canary.person+q7@example-mail.com",
    "PHONE": "+1 (415) 555-0142",
    "CARD": "4111 1111 1111 1111",
    "SSN": "219-09-9999",
    "IBAN": "GB82 WEST 1234 5698 7654 32",
    "IP": "203.0.113.77",
    "JWT": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjYW5hcnkiLCJpYXQiOjE1MTYyMzkwMjJ9."
           "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "API_KEY": "sk-proj-CANARYq8W2n4Lr7Xv1Zt9Yp3Kd6Hs0Jm5Ub2Nf8Gc4Ve",
    "AWS": "AKIAIOSFODNN7CANARY1",
    "GITHUB": "ghp_CanaryTokenAbCdEfGhIjKlMnOpQrStUvWx12",
    "BEARER": "Bearer abc123CanaryBearerTokenValue987xyz",
    "SECRET": "password=Canary-Hunter2-Secret!",
    "URL_CREDENTIALS": "postgres://admin:CanaryPassw0rd@db.internal:5432/app",
}
# The substrings that must never be stored (for assignments and URLs: the secret part).
MUST_NOT_APPEAR = [v for k, v in CANARIES.items() if k not in ("BEARER", "SECRET", "URL_CREDENTIALS")] + [
    "abc123CanaryBearerTokenValue987xyz", "Canary-Hunter2-Secret!", "CanaryPassw0rd",
]


def text_with_all() -> str:
    return " | ".join(f"{k}: {v}" for k, v in CANARIES.items())


def emit_canary_trace(tracer) -> None:
    everything = text_with_all()
    with tracer.start_as_current_span(f"agent for {CANARIES['EMAIL']}") as root:
        root.set_attribute("openinference.span.kind", "AGENT")
        root.set_attribute("input.value", everything)
        root.set_attribute("user.id", CANARIES["EMAIL"])
        with tracer.start_as_current_span("llm") as llm:
            llm.set_attribute("openinference.span.kind", "LLM")
            llm.set_attribute("llm.input_messages.0.message.role", "user")
            llm.set_attribute("llm.input_messages.0.message.content", everything)
            llm.set_attribute("llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
                              json.dumps({"card": CANARIES["CARD"], "email": CANARIES["EMAIL"]}))
            llm.set_attribute("llm.output_messages.0.message.tool_calls.0.tool_call.function.name", "charge")
        with tracer.start_as_current_span("charge") as tool:
            tool.set_attribute("openinference.span.kind", "TOOL")
            tool.set_attribute("tool.name", "charge")
            tool.set_attribute("input.value", json.dumps({"card": CANARIES["CARD"], "iban": CANARIES["IBAN"],
                                                          "auth": "Authorization: " + CANARIES["BEARER"]}))
            try:
                raise ValueError(f"card {CANARIES['CARD']} declined for {CANARIES['EMAIL']} "
                                 f"from {CANARIES['IP']} with {CANARIES['API_KEY']}")
            except ValueError as exc:
                tool.record_exception(exc)
            tool.set_status(Status(StatusCode.ERROR, f"declined: {CANARIES['SSN']} {CANARIES['JWT']}"))
        with tracer.start_as_current_span("retrieve") as r:
            r.set_attribute("openinference.span.kind", "RETRIEVER")
            r.set_attribute("retrieval.documents.0.document.id", "doc-1")
            r.set_attribute("retrieval.documents.0.document.content", everything)
            r.add_event("note", {"detail": f"{CANARIES['AWS']} {CANARIES['GITHUB']} {CANARIES['URL_CREDENTIALS']}"})


def json_payload() -> bytes:
    everything = text_with_all()
    attr = lambda k, v: {"key": k, "value": {"stringValue": v}}  # noqa: E731
    doc = {"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", "canary-json"), attr("deployment.owner", CANARIES["EMAIL"])]},
        "scopeSpans": [{"scope": {"name": "canary"}, "spans": [{
            "traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": f"call {CANARIES['PHONE']}",
            "startTimeUnixNano": "1795300000000000000", "endTimeUnixNano": "1795300001000000000",
            "attributes": [attr("openinference.span.kind", "CHAIN"), attr("output.value", everything)],
            "links": [{"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(),
                       "attributes": [attr("why", CANARIES["SECRET"])]}],
            "status": {"code": 2, "message": everything},
        }]}]}]}
    return json.dumps(doc).encode()


def assert_no_canary(blob: bytes, where: str) -> None:
    for value in MUST_NOT_APPEAR:
        assert value.encode() not in blob, f"{value!r} found in {where}"


def stored_span(c, transport: str, name: str, attributes: dict, columns: str,
                compression: str | None = None) -> dict:
    """Send one span with ``attributes`` through the real SDK exporter and return its stored row (``columns``)."""
    endpoint = c.grpc_endpoint if transport == "grpc" else c.http_url
    with sdk_tracer(transport, endpoint, compression=compression) as tracer:
        with tracer.start_as_current_span(name) as span:
            span.set_attributes(attributes)
    return c.wait_for(f"SELECT {columns} FROM spans", lambda r: len(r) == 1)[0]


def pseudonym(key: str, type_: str, value: str) -> str:
    """The placeholder DESIGN.md gives a value under ``secret_key``: ``<TYPE:`` + HMAC-SHA256(TYPE:value)[:6] + ``>``."""
    import hashlib
    import hmac

    return f"<{type_}:" + hmac.new(key.encode(), f"{type_}:{value}".encode(), hashlib.sha256).hexdigest()[:6] + ">"


def test_canaries_never_reach_the_database_wal_or_logs(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, resource={"owner.email": CANARIES["EMAIL"]}) as tracer:
        emit_canary_trace(tracer)
    with sdk_tracer("http", c.http_url, compression="gzip") as tracer:
        emit_canary_trace(tracer)
    assert post(c, json_payload(), "application/json").status_code == 200
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 9)
    c.wait_for("SELECT count(*) AS n FROM trace_state WHERE judged_seq IS NOT DISTINCT FROM received_seq",
               lambda r: r[0]["n"] == 3)

    # while running: the WAL holds the uncompressed recent writes
    wal = Path(str(c.db_path) + ".wal")
    if wal.exists():
        assert_no_canary(wal.read_bytes(), "the WAL")
    # every stored value, as text, through SQL (the file itself is compressed)
    for table in ("spans", "detections", "candidates"):
        dump = json.dumps(c.query(f"SELECT * FROM {table}"), default=str, ensure_ascii=False)
        assert_no_canary(dump.encode(), f"table {table}")
    counts = c.query("SELECT pii_redactions FROM spans WHERE span_kind = 'TOOL'")
    assert json.loads(counts[0]["pii_redactions"]).get("CARD", 0) >= 1

    assert c.stop() == 0
    assert_no_canary(Path(c.db_path).read_bytes(), "the database file")
    if wal.exists():
        assert_no_canary(wal.read_bytes(), "the WAL after shutdown")
    assert_no_canary(c.log().encode(), "the server log")


def test_an_integer_attribute_holding_a_card_number_is_stored_redacted_with_its_request(start_collector):
    """It used to make the whole group commit fail: every request in it was answered "retry", forever."""
    c = start_collector(FAST_JUDGE)
    for transport, endpoint in (("grpc", c.grpc_endpoint), ("http", c.http_url)):
        with sdk_tracer(transport, endpoint) as tracer:
            with tracer.start_as_current_span(f"pay-{transport}") as span:
                span.set_attribute("payment.card", 4111111111111111)
                span.set_attribute("payment.cards", [4111111111111111, 4012888888881881])
                span.set_attribute("customer.phone", 4155550132)
                with tracer.start_as_current_span(f"good-{transport}"):
                    pass
    rows = c.wait_for("SELECT name, attributes, pii_redactions FROM spans ORDER BY name",
                      lambda r: len(r) == 4)
    assert [r["name"] for r in rows] == ["good-grpc", "good-http", "pay-grpc", "pay-http"]
    for row in rows[2:]:
        assert json.loads(row["attributes"])["payment"] == {"card": "<CARD>", "cards": ["<CARD>", "<CARD>"]}
        assert json.loads(row["attributes"])["customer"] == {"phone": "<PHONE>"}
        assert json.loads(row["pii_redactions"]) == {"CARD": 3, "PHONE": 1}
    assert "ConversionException" not in c.log()


def test_scope_version_and_mime_types_are_scanned_like_every_other_text(start_collector):
    """A client chooses these strings too: the scope's version and the declared mime types were stored as sent."""
    c = start_collector(FAST_JUDGE)
    for transport, endpoint in (("grpc", c.grpc_endpoint), ("http", c.http_url)):
        with sdk_tracer(transport, endpoint, scope_version=f"1.0 {CANARIES['EMAIL']} {CANARIES['API_KEY']}") as tracer:
            with tracer.start_as_current_span(f"mime-{transport}") as span:
                span.set_attribute("input.value", "hello")
                span.set_attribute("input.mime_type", f"text/plain; owner={CANARIES['EMAIL']}")
                span.set_attribute("output.value", "bye")
                span.set_attribute("output.mime_type", f"text/plain; key={CANARIES['AWS']}")
    rows = c.wait_for("SELECT scope_version, input_mime_type, output_mime_type, pii_redactions FROM spans",
                      lambda r: len(r) == 2)
    for row in rows:
        assert row["scope_version"] == "1.0 <EMAIL> <API_KEY>"
        assert row["input_mime_type"] == "text/plain; owner=<EMAIL>"
        assert row["output_mime_type"] == "text/plain; key=<API_KEY>"
    assert c.stop() == 0
    assert_no_canary(Path(c.db_path).read_bytes(), "the database file")


def test_pii_in_attribute_keys_is_not_hidden_by_splitting_the_key_at_its_dots(start_collector):
    """Keys are nested at their dots; an e-mail or a JWT in a key was cut into pieces no rule knows."""
    c = start_collector(FAST_JUDGE)
    keyed = [f"visits by {CANARIES['EMAIL']}", f"session.{CANARIES['JWT']}"]
    with sdk_tracer("grpc", c.grpc_endpoint, resource={f"owner.{CANARIES['EMAIL']}": "yes"}) as tracer:
        with tracer.start_as_current_span("keys") as span:
            span.set_attribute("llm.input_messages.0.message.role", "user")
            for key in keyed:
                span.set_attribute(key, 1)
            span.add_event("seen", {f"by.{CANARIES['EMAIL']}": True})
    rows = c.wait_for("SELECT attributes, resource_attributes, events, pii_redactions FROM spans",
                      lambda r: len(r) == 1)
    stored = json.dumps(rows, ensure_ascii=False)
    for piece in ("canary.person+q7", "person+q7", "example-mail", "eyJzdWIiOiJjYW5hcnkiLCJpYXQiOjE1MTYyMzkwMjJ9",
                  "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"):
        assert piece not in stored
    attributes = json.loads(rows[0]["attributes"])
    assert attributes["llm"]["input_messages"][0]["message"]["role"] == "user"  # other keys still nest
    assert {"visits by <EMAIL>", "session.<JWT>"} <= set(attributes)
    counts = json.loads(rows[0]["pii_redactions"])
    assert counts["EMAIL"] == 3 and counts["JWT"] == 1
    assert c.stop() == 0
    assert_no_canary(Path(c.db_path).read_bytes(), "the database file")


def test_captured_http_headers_as_semconv_arrays_are_redacted(start_collector):
    """HTTP instrumentations record ``http.request.header.<name>`` as a list of strings (OTel semantic
    conventions): a token in that list was stored as sent, while the same token as a plain string was not."""
    c = start_collector(FAST_JUDGE)
    token, key = "abcdefghijklmnopqrstuvwxyzCanaryHeaderTok", "CanaryHeaderApiKeyValue-zyxwvutsrq"
    with sdk_tracer("http", c.http_url) as tracer:
        with tracer.start_as_current_span("GET /orders") as span:
            span.set_attribute("http.request.header.authorization", [f"Bearer {token}"])
            span.set_attribute("http.request.header.proxy-authorization", ["Basic YWRtaW46Q2FuYXJ5UGFzcw=="])
            span.set_attribute("http.request.header.x-api-key", [key])
    rows = c.wait_for("SELECT attributes, pii_redactions FROM spans", lambda r: len(r) == 1)
    headers = json.loads(rows[0]["attributes"])["http"]["request"]["header"]
    assert headers == {"authorization": ["Bearer <BEARER_TOKEN>"], "proxy-authorization": ["Basic <BEARER_TOKEN>"],
                       "x-api-key": ["<SECRET>"]}
    assert json.loads(rows[0]["pii_redactions"]) == {"BEARER_TOKEN": 2, "SECRET": 1}
    assert c.stop() == 0
    for value in (token, key, "YWRtaW46Q2FuYXJ5UGFzcw=="):
        assert value.encode() not in Path(c.db_path).read_bytes()


# What users paste into a chat agent and tools print: values the first rules missed.
PASTED = {
    "gitlab": "glpat-Xq7Rt2Lm9Np4Vs1Kc8Hd",
    "sendgrid": "SG.Qw3Er5Ty7Ui9Op1As3Df5G.Hj7Kl9Zx1Cv3Bn5Mq7Wr9Ty1Ui3Op5As7Df9Gh1Jk3",
    "npm": "npm_Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Y",
    "pgp": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGCanaryPgpKeyMaterial0123456789abcdefABCDEF\n=Zq9x\n"
           "-----END PGP PRIVATE KEY BLOCK-----",
    "azure": "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=CanaryAzureKey0123456789abcdefABCDEF/+==;"
             "EndpointSuffix=core.windows.net",
    "phone": "+1.415.555.0187",
    "login": "I can't get in, my password is Canary-Summer2024!",
    "headers": "Cookie: sid=CanarySession0123abcdef; theme=dark",
}
PASTED_SECRETS = [v for k, v in PASTED.items() if k not in ("pgp", "azure", "login", "headers")] + [
    "lQOYBGCanaryPgpKeyMaterial", "CanaryAzureKey0123456789abcdefABCDEF", "Canary-Summer2024", "CanarySession0123"]


def test_pasted_provider_keys_key_blocks_and_passwords_never_reach_the_database_and_ids_survive(start_collector):
    """Through the real SDK and both receivers: in a user message, a JSON tool result (JSON in JSON) and
    a whole attribute value. The ids an answer cites, trace ids, dates and the model stay as sent, so
    no hallucination is invented by redaction."""
    c = start_collector(FAST_JUDGE)
    message = "Here is my setup:\n" + "\n".join(f"{k}: {v}" for k, v in PASTED.items())
    for transport, endpoint in (("grpc", c.grpc_endpoint), ("http", c.http_url)):
        with sdk_tracer(transport, endpoint) as tracer:
            with tracer.start_as_current_span(f"agent-{transport}") as root:
                root.set_attribute("openinference.span.kind", "AGENT")
                root.set_attribute("user.id", PASTED["phone"])
                root.set_attribute("input.value", message)
                with tracer.start_as_current_span("kb_search") as r:
                    r.set_attribute("openinference.span.kind", "RETRIEVER")
                    r.set_attribute("retrieval.documents.0.document.id", "KB-42")
                    r.set_attribute("retrieval.documents.1.document.id", "doc-123")
                with tracer.start_as_current_span("read_env") as tool:
                    tool.set_attribute("openinference.span.kind", "TOOL")
                    tool.set_attribute("tool.name", "read_env")
                    tool.set_attribute("input.value", json.dumps({"order_id": "ORD-2024-000123", "since": "2024-08-06"}))
                    tool.set_attribute("input.mime_type", "application/json")
                    inner = json.dumps({"stdout": message, "run": "550e8400-e29b-41d4-a716-446655440000"})
                    tool.set_attribute("output.value", json.dumps({"content": [{"type": "text", "text": inner}]}))
                    tool.set_attribute("output.mime_type", "application/json")
                with tracer.start_as_current_span("llm") as llm:
                    llm.set_attribute("openinference.span.kind", "LLM")
                    llm.set_attribute("llm.model_name", "gpt-4o-2024-08-06")
                    llm.set_attribute("llm.input_messages.0.message.role", "user")
                    llm.set_attribute("llm.input_messages.0.message.content", message)
                    llm.set_attribute("llm.output_messages.0.message.role", "assistant")
                    llm.set_attribute("llm.output_messages.0.message.content",
                                      "Rotate those keys now, see [KB-42] and [doc-123].")
    c.wait_for("SELECT count(*) AS n FROM trace_state WHERE judged_seq IS NOT DISTINCT FROM received_seq",
               lambda r: r[0]["n"] == 2)
    rows = c.query("SELECT * FROM spans")
    assert len(rows) == 8
    dump = json.dumps(rows, default=str, ensure_ascii=False)
    for value in PASTED_SECRETS:
        assert value not in dump, value
    for row in rows:
        if row["span_kind"] == "AGENT":
            assert row["user_id"] == "<PHONE>"
            assert json.loads(row["pii_redactions"]) == {"API_KEY": 3, "PHONE": 2, "PRIVATE_KEY": 1, "SECRET": 3}
        if row["span_kind"] == "TOOL":
            assert json.loads(row["input_value"]) == {"order_id": "ORD-2024-000123", "since": "2024-08-06"}
            inner = json.loads(json.loads(row["output_value"])["content"][0]["text"])
            assert inner["run"] == "550e8400-e29b-41d4-a716-446655440000" and "<API_KEY>" in inner["stdout"]
        if row["span_kind"] == "LLM":
            assert row["llm_model_name"] == "gpt-4o-2024-08-06"
    assert c.query("SELECT failure_mode FROM detections") == []
    assert c.stop() == 0
    for value in PASTED_SECRETS:
        assert value.encode() not in Path(c.db_path).read_bytes()


def test_values_right_after_a_json_unicode_escape_are_redacted(start_collector):
    """A value glued to a ``\\uXXXX`` escape was kept whole, of every type: Go's encoding/json sends
    ``<jane@example.com>`` as ``\\u003cjane@example.com\\u003e`` and Python's ``ensure_ascii`` sends
    ``邮箱：`` + an address as ``\\u90ae\\u7bb1\\uff1a`` + the address; the escape's hex digits read as a
    word the value was part of. The JSON stays valid and decodes to the text with its placeholders."""
    c = start_collector(FAST_JUDGE)
    go_style = {"to": "<jane.escaped@example.com>", "card": "<4111 1111 1111 1111>", "ip": "<203.0.113.91>",
                "key": f"<{CANARIES['AWS']}>"}
    go_json = json.dumps(go_style).replace("<", "\\u003c").replace(">", "\\u003e")
    cjk_json = json.dumps({"content": "邮箱：jane.escaped@example.com，电话：+86 138 0013 8000"},
                          ensure_ascii=True)
    row = stored_span(c, "grpc", "send_mail", {
        "openinference.span.kind": "TOOL", "input.value": go_json, "input.mime_type": "application/json",
        "output.value": cjk_json, "tool.parameters": go_json}, "input_value, output_value, attributes, pii_redactions")
    dump = json.dumps(row, ensure_ascii=False)
    for value in ("jane.escaped@example.com", "4111 1111 1111 1111", "203.0.113.91", CANARIES["AWS"], "138 0013 8000"):
        assert value not in dump, value
    assert json.loads(row["input_value"]) == {"to": "<<EMAIL>>", "card": "<<CARD>>", "ip": "<<IP>>",
                                              "key": "<<API_KEY>>"}
    assert json.loads(row["output_value"]) == {"content": "邮箱：<EMAIL>，电话：<PHONE>"}
    assert json.loads(json.loads(row["attributes"])["tool"]["parameters"])["to"] == "<<EMAIL>>"
    assert json.loads(row["pii_redactions"]) == {"EMAIL": 3, "CARD": 2, "IP": 2, "API_KEY": 2, "PHONE": 1}
    assert c.stop() == 0
    assert_no_canary(Path(c.db_path).read_bytes(), "the database file")


def test_percent_encoded_email_addresses_in_urls_are_redacted_and_pseudonymised_like_plain_ones(start_collector):
    """``?email=jane%40example.com`` (an HTTP client span's ``url.full``, a tool's request URL) was stored as
    sent: the address rule wanted a literal ``@``. With a key, both spellings of an address get one pseudonym."""
    key = "pct-email-test-key"
    c = start_collector({**FAST_JUDGE, "processors": {**FAST_JUDGE["processors"], "pii": {"secret_key": key}}})
    token = pseudonym(key, "EMAIL", "jane.pct@example.com")
    row = stored_span(c, "http", "GET /users", {
        "url.full": "https://api.example/v1/users?email=jane.pct%40example.com&page=2",
        "input.value": "Look up jane.pct@example.com, then open https://crm.example/cb%3Femail%3Djane.pct%40example.com"
                       " and /users/bob%2Bx%40example.org/"}, "input_value, attributes, pii_redactions")
    dump = json.dumps(row, ensure_ascii=False)
    for value in ("jane.pct", "bob%2Bx"):
        assert value not in dump, value
    assert json.loads(row["attributes"])["url"]["full"] == f"https://api.example/v1/users?email={token}&page=2"
    assert row["input_value"].startswith(
        f"Look up {token}, then open https://crm.example/cb%3Femail%3D{token} and /users/<EMAIL:")
    assert json.loads(row["pii_redactions"]) == {"EMAIL": 4}


def test_a_labelled_lower_case_iban_and_an_azure_sas_signature_are_redacted(start_collector):
    """Typed by a person, "my iban is de89 3704 ..." was stored as sent (the shape rule wants upper case),
    and so was the ``sig=`` of an Azure SAS URL that a tool returned: a link that opens the blob until it
    expires. An unlabelled lower-case run and a SAS URL's other fields stay as sent."""
    c = start_collector(FAST_JUDGE)
    sas = ("https://acme.blob.core.windows.net/invoices/inv-42.pdf?sv=2022-11-02&ss=b&sp=r"
           "&se=2026-12-31T00:00:00Z&sig=CanarySasSig0123abcdEFGH%2B4567%3D")
    row = stored_span(c, "grpc", "refund", {
        "openinference.span.kind": "TOOL",
        "input.value": json.dumps({"customer_iban": "nl91abna0417164300", "run": "de89xyz"}),
        "output.value": f"Invoice: {sas}",
        "llm.input_messages.0.message.content": "my iban is de89 3704 0044 0532 0130 00, thanks",
    }, "input_value, output_value, attributes, pii_redactions")
    dump = json.dumps(row, ensure_ascii=False)
    for value in ("nl91abna0417164300", "3704 0044", "CanarySasSig"):
        assert value not in dump, value
    assert json.loads(row["input_value"]) == {"customer_iban": "<IBAN>", "run": "de89xyz"}
    assert row["output_value"] == f"Invoice: {sas.split('&sig=')[0]}&sig=<SECRET>"
    content = json.loads(row["attributes"])["llm"]["input_messages"][0]["message"]["content"]
    assert content == "my iban is <IBAN>, thanks"
    assert json.loads(row["pii_redactions"]) == {"IBAN": 2, "SECRET": 1}


def test_a_card_number_one_space_after_another_number_is_redacted(start_collector):
    """A numbered list, a table row or an amount before the card ("1 4111 1111 1111 1111", "amount 1999
    4111111111111111") kept the card: the digit run began at the first number and no prefix of it was a
    card; after a word with digits ("#A1234 4012 ...") the card's own trigger never fired. The numbers
    before the card stay as sent."""
    c = start_collector(FAST_JUDGE)
    text = ("Cards on file:\n1 4111 1111 1111 1111\n2 5500-0000-0000-0004\n"
            "amount 1999 4012888888881881\norder #A1234 3782 822463 10005\nref 2024 2024 done")
    row = stored_span(c, "http", "billing", {"input.value": text, "tool.parameters": json.dumps({"note": text})},
                      "input_value, attributes, pii_redactions")
    expected = ("Cards on file:\n1 <CARD>\n2 <CARD>\namount 1999 <CARD>\norder #A1234 <CARD>\nref 2024 2024 done")
    assert row["input_value"] == expected
    assert json.loads(json.loads(row["attributes"])["tool"]["parameters"]) == {"note": expected}
    assert json.loads(row["pii_redactions"]) == {"CARD": 8}


def test_pass_keys_and_an_azure_subscription_key_header_are_secrets(start_collector):
    """``DB_PASS=...`` / ``SMTP_PASS: ...`` (a pasted .env or compose file), ``{"pass": ...}`` and the
    ``Ocp-Apim-Subscription-Key`` header of Azure AI services were stored as sent. Words ending in
    "pass" and an eval's ``"pass": "yes"`` verdict stay."""
    c = start_collector(FAST_JUDGE)
    env_file = ("DB_HOST=db.internal\nDB_PASS=CanaryDbPass-77\nSMTP_PASS: CanarySmtpPass88\n"
                "RABBITMQ_DEFAULT_PASS=CanaryRabbit99\ncompass: north\nbypass=cache")
    row = stored_span(c, "grpc", "deploy", {
        "input.value": env_file,
        "tool.parameters": json.dumps({"user": "app", "pass": "CanaryJsonPass11"}),
        "http.request.header.ocp-apim-subscription-key": ["CanaryApimKey0123456789abcdef01"],
        "eval.result": json.dumps({"pass": "yes", "score": 0.9}),
    }, "input_value, attributes, pii_redactions")
    dump = json.dumps(row, ensure_ascii=False)
    for value in ("CanaryDbPass", "CanarySmtpPass", "CanaryRabbit", "CanaryJsonPass", "CanaryApimKey"):
        assert value not in dump, value
    assert row["input_value"] == ("DB_HOST=db.internal\nDB_PASS=<SECRET>\nSMTP_PASS: <SECRET>\n"
                                  "RABBITMQ_DEFAULT_PASS=<SECRET>\ncompass: north\nbypass=cache")
    attributes = json.loads(row["attributes"])
    assert json.loads(attributes["tool"]["parameters"]) == {"user": "app", "pass": "<SECRET>"}
    assert attributes["http"]["request"]["header"]["ocp-apim-subscription-key"] == ["<SECRET>"]
    assert json.loads(attributes["eval"]["result"]) == {"pass": "yes", "score": 0.9}
    assert json.loads(row["pii_redactions"]) == {"SECRET": 5}


def test_an_email_address_with_an_internationalised_domain_is_redacted(start_collector):
    """``info@münchen.de`` was stored as sent, as text and as Python's ensure_ascii JSON
    (``info@m\\u00fcnchen.de``): the domain took ASCII letters only."""
    c = start_collector(FAST_JUDGE)
    row = stored_span(c, "http", "mail", {
        "input.value": "Schreiben Sie an kanzlei@anwälte-düsseldorf.de oder info@münchen.de.",
        "output.value": json.dumps({"to": "büro@über-uns.example.com"}),
    }, "input_value, output_value, pii_redactions", compression="gzip")
    assert row["input_value"] == "Schreiben Sie an <EMAIL> oder <EMAIL>."
    assert json.loads(row["output_value"]) == {"to": "<EMAIL>"}
    assert json.loads(row["pii_redactions"]) == {"EMAIL": 3}


def test_a_percent_encoded_international_phone_number_in_a_url_is_redacted(start_collector):
    """``?phone=%2B14155550132`` (a CRM lookup's ``url.full``) was stored as sent: the ``+`` form wanted a
    literal plus. Other encoded plus signs (``C%2B%2B``, ``%2B15%25``) stay."""
    c = start_collector(FAST_JUDGE)
    row = stored_span(c, "grpc", "GET /contacts", {
        "url.full": "https://crm.example/contacts?phone=%2B14155550132&lang=C%2B%2B",
        "output.value": "callback tel%3A%2B44%2020%207946%200958 score=%2B15%25",
    }, "output_value, attributes, pii_redactions")
    assert json.loads(row["attributes"])["url"]["full"] == "https://crm.example/contacts?phone=<PHONE>&lang=C%2B%2B"
    assert row["output_value"] == "callback tel%3A<PHONE> score=%2B15%25"
    assert json.loads(row["pii_redactions"]) == {"PHONE": 2}


def test_a_google_oauth_access_token_and_a_pypi_token_pasted_bare_are_api_keys(start_collector):
    """A Google OAuth access token (``ya29.``, what ``gcloud auth print-access-token`` prints) and a PyPI
    upload token (``pypi-AgE...``) have fixed prefixes like the other providers' keys, but were stored
    as sent when pasted without a key name."""
    c = start_collector(FAST_JUDGE)
    google = "ya29.a0AfH6SMCanaryGoogleOauthTok3nXyZ0123456789abcdefGHIJ"
    pypi = "pypi-AgEIcHlwaS5vcmcCJCanaryPypiToken0123456789abcdefghijklmnopqrstuvwxyzABCD"
    row = stored_span(c, "grpc", "shell", {
        "input.value": f"$ gcloud auth print-access-token\n{google}\n$ twine upload -p {pypi}"},
        "input_value, pii_redactions")
    assert row["input_value"] == "$ gcloud auth print-access-token\n<API_KEY>\n$ twine upload -p <API_KEY>"
    assert json.loads(row["pii_redactions"]) == {"API_KEY": 2}


def test_one_address_gets_one_pseudonym_as_text_as_json_in_a_text_column_and_as_json_in_json(start_collector):
    """With a key, ``josé@example.com`` said in plain text and sent as a tool call's JSON arguments
    (ensure_ascii: ``jos\\u00e9@...``, in ``input.value`` and in ``gen_ai.tool.call.arguments``) got three
    different pseudonyms: only the JSON attributes were unescaped before the HMAC."""
    key = "one-pseudonym-key"
    c = start_collector({**FAST_JUDGE, "processors": {**FAST_JUDGE["processors"], "pii": {"secret_key": key}}})
    address = "josé.garcía@example.com"
    token = pseudonym(key, "EMAIL", address)
    arguments = json.dumps({"to": address})            # ensure_ascii, as the OpenAI SDK sends them
    row = stored_span(c, "grpc", "send_email", {
        "openinference.span.kind": "TOOL", "input.value": arguments, "gen_ai.tool.call.arguments": arguments,
        "output.value": f"sent to {address}"}, "input_value, output_value, attributes")
    assert json.loads(row["input_value"]) == {"to": token}
    assert row["output_value"] == f"sent to {token}"
    assert json.loads(json.loads(row["attributes"])["gen_ai"]["tool"]["call"]["arguments"]) == {"to": token}


def test_url_encoded_authorization_values_are_redacted(start_collector):
    """``OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20...`` (the form the OTel SDK reads: an agent that
    logs its environment, a deploy tool's output) and ``?authorization=Basic+...`` were stored as sent: the
    rule wanted a literal blank after the scheme. The scheme and what follows the token stay."""
    c = start_collector(FAST_JUDGE)
    env = ("OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20CanaryOtlpTok3n%2Fabc%3D,x-tenant=acme\n"
           "GET /cb?authorization=Basic+Q2FuYXJ5VXNlcjpwdw==&page=2\n"
           "retry with Bearer%20CanaryLooseTok3n99 later")
    row = stored_span(c, "grpc", "deploy", {"input.value": env}, "input_value, pii_redactions")
    for value in ("CanaryOtlpTok3n", "Q2FuYXJ5VXNlcjpwdw", "CanaryLooseTok3n"):
        assert value not in row["input_value"], value
    assert row["input_value"] == ("OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<BEARER_TOKEN>,x-tenant=acme\n"
                                  "GET /cb?authorization=Basic+<BEARER_TOKEN>&page=2\n"
                                  "retry with Bearer%20<BEARER_TOKEN> later")
    assert json.loads(row["pii_redactions"]) == {"BEARER_TOKEN": 3}


def test_card_numbers_grouped_by_dots_or_no_break_spaces_are_redacted(start_collector):
    """"4111.1111.1111.1111" (how many people write it) and a card copied from a web page or a receipt,
    whose groups a no-break or thin space separates, were stored as sent: the rule took only blanks and
    dashes. A dot counts only between groups of a card's shape: decimals and versions stay as sent."""
    c = start_collector(FAST_JUDGE)
    text = ("paid with 4111.1111.1111.1111, then 5500\u00a00000\u00a00000\u00a00004 and "
            "3782\u2009822463\u200910005; pi 3.141592653589793, build 4111.1111.1111.1111.5")
    row = stored_span(c, "http", "billing", {"input.value": text,
                                             "tool.parameters": json.dumps({"note": text}, ensure_ascii=False)},
                      "input_value, attributes, pii_redactions")
    expected = "paid with <CARD>, then <CARD> and <CARD>; pi 3.141592653589793, build 4111.1111.1111.1111.5"
    assert row["input_value"] == expected
    assert json.loads(json.loads(row["attributes"])["tool"]["parameters"]) == {"note": expected}
    assert json.loads(row["pii_redactions"]) == {"CARD": 6}


def test_a_mac_address_in_ciscos_dotted_form_is_redacted(start_collector):
    """``show arp`` / ``show mac address-table`` output (a network agent's tool result) writes MACs as
    ``001a.2b3c.4d5e``: they were stored as sent. A dotted number without a hex letter stays."""
    c = start_collector(FAST_JUDGE)
    text = "Internet  10.0.0.7  4  001a.2b3c.4d5e  ARPA  Gi0/1\nuptime 1733.5800.0012, build v1.abcd.ef01.2345x"
    row = stored_span(c, "grpc", "show_arp", {"output.value": text}, "output_value, pii_redactions")
    assert row["output_value"] == ("Internet  <IP>  4  <MAC>  ARPA  Gi0/1\n"
                                   "uptime 1733.5800.0012, build v1.abcd.ef01.2345x")
    assert json.loads(row["pii_redactions"]) == {"IP": 1, "MAC": 1}
