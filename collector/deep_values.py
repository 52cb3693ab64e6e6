"""Attribute values nested deeper than protobuf's parser goes become ``[too deep]`` before parsing.

DESIGN.md: a value nested deeper than ``max_nesting_depth`` is replaced by the string
``[too deep]``; the rest of the request is stored. But protobuf's parser (upb) refuses a message
nested more than 100 levels deep, and each level of a key-value list inside an attribute value is
three message levels (AnyValue, KeyValueList, KeyValue): an attribute nested 32 lists deep failed
the whole request as undecodable, whatever the limit said. When a request does not parse, its
AnyValues too deep to parse are replaced by that string (in the wire bytes, or in the OTLP/JSON
document) and it is parsed again. Decoding then cuts at ``max_nesting_depth`` as usual; at the
default of 32 both cut at the same level.

Only requests that failed to parse pay for this; a request still undecodable after it is refused
as before.
"""

from __future__ import annotations

from typing import Any

#: What a value nested too deep becomes.
TOO_DEEP = "[too deep]"

#: upb's default limit on message nesting (ExportTraceServiceRequest is level 1).
MAX_MESSAGE_LEVEL = 100

# Message kind -> {field number: child message kind}, for every path from the request to an AnyValue.
_CHILDREN: dict[str, dict[int, str]] = {
    "request": {1: "resource_spans"},
    "resource_spans": {1: "resource", 2: "scope_spans"},
    "resource": {1: "keyvalue"},
    "scope_spans": {1: "scope", 2: "span"},
    "scope": {3: "keyvalue"},
    "span": {9: "keyvalue", 11: "event", 13: "link"},
    "event": {3: "keyvalue"},
    "link": {5: "keyvalue"},
    "keyvalue": {2: "anyvalue"},
    "anyvalue": {5: "array", 6: "kvlist"},
    "array": {1: "anyvalue"},
    "kvlist": {1: "keyvalue"},
}
# Levels below a container AnyValue to its child AnyValues.
_LEVELS_TO_CHILD = {"array": 2, "kvlist": 3}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TOO_DEEP_BYTES = TOO_DEEP.encode()
_TOO_DEEP_STRING = b"\x0a" + _encode_varint(len(_TOO_DEEP_BYTES)) + _TOO_DEEP_BYTES  # AnyValue.string_value


def clamp_wire(body: bytes) -> bytes:
    """``body`` (a binary ExportTraceServiceRequest) with every AnyValue too deep to parse made ``[too deep]``.

    Raises ValueError when the bytes are not protobuf wire format at all.
    """
    return _clamp(body, 0, len(body), "request", 1)


def _clamp(buf: bytes, pos: int, end: int, kind: str, level: int) -> bytes:
    children = _CHILDREN[kind]
    out = bytearray()
    while pos < end:
        start = pos
        tag, pos = _varint(buf, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 2:
            length, body = _varint(buf, pos)
            stop = body + length
            if stop > end:
                raise ValueError("a field runs past its message")
            child = children.get(field)
            if child is None:
                out += buf[start:stop]
            elif kind == "anyvalue" and level + _LEVELS_TO_CHILD[child] > MAX_MESSAGE_LEVEL:
                out += _TOO_DEEP_STRING
            else:
                inner = _clamp(buf, body, stop, child, level + 1)
                out += buf[start:pos]  # the tag
                out += _encode_varint(len(inner))
                out += inner
            pos = stop
        elif wire_type == 0:
            _, pos = _varint(buf, pos)
            out += buf[start:pos]
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            if pos > end:
                raise ValueError("a fixed-size field runs past its message")
            out += buf[start:pos]
        else:
            raise ValueError(f"wire type {wire_type} is not used by OTLP")
    return bytes(out)


# OTLP/JSON: the same paths, in either key spelling.
_JSON_CHILDREN: dict[str, dict[str, str]] = {
    "request": {"resourceSpans": "resource_spans", "resource_spans": "resource_spans"},
    "resource_spans": {"resource": "resource", "scopeSpans": "scope_spans", "scope_spans": "scope_spans"},
    "resource": {"attributes": "keyvalue"},
    "scope_spans": {"scope": "scope", "spans": "span"},
    "scope": {"attributes": "keyvalue"},
    "span": {"attributes": "keyvalue", "events": "event", "links": "link"},
    "event": {"attributes": "keyvalue"},
    "link": {"attributes": "keyvalue"},
    "keyvalue": {"value": "anyvalue"},
    "anyvalue": {"arrayValue": "array", "array_value": "array", "kvlistValue": "kvlist", "kvlist_value": "kvlist"},
    "array": {"values": "anyvalue"},
    "kvlist": {"values": "keyvalue"},
}


def clamp_json(doc: Any) -> Any:
    """An OTLP/JSON document (parsed) with every AnyValue too deep to parse made ``{"stringValue": "[too deep]"}``."""
    return _clamp_json(doc, "request", 1)


def _clamp_json(node: Any, kind: str, level: int) -> Any:
    if isinstance(node, list):
        return [_clamp_json(item, kind, level) for item in node]
    if not isinstance(node, dict):
        return node
    children = _JSON_CHILDREN[kind]
    out = {}
    for key, value in node.items():
        child = children.get(key)
        if child is None:
            out[key] = value
        elif kind == "anyvalue" and level + _LEVELS_TO_CHILD[child] > MAX_MESSAGE_LEVEL:
            return {"stringValue": TOO_DEEP}
        else:
            out[key] = _clamp_json(value, child, level + 1)
    return out
