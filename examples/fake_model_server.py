"""A local stand-in for an OpenAI-compatible model: ``POST /v1/chat/completions`` with canned answers.

It lets ``examples/support_agent.py`` run the real OpenAI SDK (and its OpenInference
instrumentation) with no network and no API key. The "model" is a script per
customer question: the question is matched against :data:`SCRIPTS` and the turn is
the number of assistant messages already in the conversation, so the same
conversation always gets the same answer. Answers include tool calls, arguments
that break the declared tool schema, a reply cut at ``max_tokens``
(``finish_reason: length``), refusals, invented citations and a rate-limit error.

Run it alone to poke at it with curl::

    python examples/fake_model_server.py --port 8099
    curl -s 127.0.0.1:8099/v1/chat/completions -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Where is my order ORD-1001?"}]}'
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Turn:
    """One model reply: text, tool calls, or an HTTP error the API would return instead."""

    content: str | None = None
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    finish_reason: str | None = None  # default: "tool_calls" with calls, else "stop"
    error: tuple[int, str, str] | None = None  # (HTTP status, error type, message)


@dataclass(frozen=True)
class Script:
    """The replies to one kind of question, turn by turn (the last one repeats)."""

    name: str
    pattern: str
    turns: tuple[Turn, ...]
    notes: str = field(default="", compare=False)


def _call(name: str, **arguments: Any) -> tuple[str, dict[str, Any]]:
    return name, arguments


#: First match wins; matched case-insensitively against the first user message.
SCRIPTS: tuple[Script, ...] = (
    Script("order_status", r"where is my order", (
        Turn(tool_calls=(_call("lookup_order", order_id="ORD-1001"),)),
        Turn("Your order ORD-1001 shipped on 18 November and should arrive by 21 November. "
             "Orders ship within 2 business days [doc-shipping-01]."),
    )),
    Script("refund_policy", r"how long do refunds", (
        Turn("Refunds are issued to the original payment method within 5 business days after we "
             "receive the item [doc-refunds-01]."),
    )),
    Script("support_hours", r"support hours|opening hours", (
        Turn("Our support team is available Monday to Friday, 8am to 8pm CET [doc-hours-01]."),
    )),
    Script("track_once", r"track .*ORD-1007", (
        Turn(tool_calls=(_call("track_shipment", order_id="ORD-1007"),)),
        Turn("ORD-1007 left our warehouse yesterday and is with the carrier; expected delivery is "
             "Friday [doc-shipping-01]."),
    )),
    Script("refund_then_email", r"refund order", (
        Turn(tool_calls=(_call("refund_payment", order_id="ORD-1003", amount=49.9, reason="damaged"),)),
        Turn(tool_calls=(_call("send_email", to="jane.doe@example.com", subject="Your refund",
                               body="Your refund of EUR 49.90 for ORD-1003 has been processed."),)),
        Turn("I've processed your refund for ORD-1003 and emailed you a confirmation [doc-refunds-01]."),
    ), notes="the refund tool fails, the model still emails a confirmation: tool_invocation + blast_radius_breach"),
    Script("bad_arguments", r"look up order", (
        Turn(tool_calls=(_call("lookup_order", order=1004),)),
        Turn(tool_calls=(_call("lookup_order", order_id="ORD-1004"),)),
        Turn("Order ORD-1004 is being packed and will ship tomorrow [doc-shipping-01]."),
    ), notes="the first call breaks lookup_order's schema (order instead of order_id)"),
    Script("truncated", r"warranty terms", (
        Turn("The ProBlend 500 warranty covers the motor for five years and the jug, blades and seals "
             "for two years from the date of delivery. To make a claim, keep your proof of purchase and",
             finish_reason="length"),
    )),
    Script("refusal", r"cancel my subscription", (
        Turn("I'm sorry, but I can't help with cancelling subscriptions."),
    ), notes="cancel_subscription is one of the declared tools"),
    Script("invented_citation", r"ship to canada", (
        Turn("Yes, we ship to Canada. Delivery takes 5-7 business days and duties are included "
             "[doc-intl-07]."),
    ), notes="doc-intl-07 was never retrieved"),
    Script("answer_without_documents", r"x200", (
        Turn("The X200 blender comes with a five-year warranty covering the motor and the blades, and "
             "you can claim it in any of our stores without a receipt."),
    ), notes="retrieval found nothing; the model answers with facts anyway"),
    Script("loop", r"parcel", (
        Turn(tool_calls=(_call("track_shipment", order_id="ORD-1005"),)),
        Turn(tool_calls=(_call("track_shipment", order_id="ORD-1005"),)),
        Turn(tool_calls=(_call("track_shipment", order_id="ORD-1005"),)),
        Turn(tool_calls=(_call("track_shipment", order_id="ORD-1005"),)),
        Turn("Your parcel ORD-1005 is still waiting for pickup at the warehouse."),
    )),
    Script("rate_limited", r"human", (
        Turn(error=(429, "rate_limit_error", "Rate limit reached for gpt-4o on requests per min (RPM): "
                                             "Limit 500, Used 500. Please try again in 120ms.")),
    )),
    Script("slow_inventory", r"in stock", (
        Turn(tool_calls=(_call("check_inventory", sku="PB-500"),)),
        Turn("Yes, the ProBlend 500 is in stock and ships within 2 business days [doc-shipping-01]."),
    )),
    Script("unhelpful", r"descale", (
        Turn("The ProBlend 500 motor is under warranty for 5 years, and the jug, blades and seals for 2 "
             "years [doc-warranty-01]."),
    ), notes="answers a question nobody asked; the customer clicks thumbs-down"),
    Script("ticket_summary", r"summari[sz]e this ticket", (
        Turn("Summary: the customer reports a broken lid on ProBlend 500 and wants a replacement."),
    ), notes="response_format asks for a JSON object; the model answers prose"),
)

FALLBACK = Script("fallback", r"", (Turn("Thanks for reaching out! Could you tell me your order number?"),))


def pick_script(messages: list[dict[str, Any]]) -> Script:
    first_user = next((m.get("content") for m in messages if m.get("role") == "user"), "") or ""
    text = first_user if isinstance(first_user, str) else json.dumps(first_user)
    return next((s for s in SCRIPTS if re.search(s.pattern, text, re.IGNORECASE)), FALLBACK)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def completion(request: dict[str, Any], counter: int) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for one chat-completions request. Deterministic apart from ``counter`` in the id."""
    messages = request.get("messages") or []
    script = pick_script(messages)
    turn_no = sum(1 for m in messages if m.get("role") == "assistant")
    turn = script.turns[min(turn_no, len(script.turns) - 1)]
    if turn.error:
        status, etype, message = turn.error
        return status, {"error": {"message": message, "type": etype, "param": None, "code": etype}}
    message: dict[str, Any] = {"role": "assistant", "content": turn.content, "refusal": None}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{script.name}_{turn_no}_{i}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(turn.tool_calls)]
    finish = turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")
    prompt_tokens = sum(_tokens(json.dumps(m)) for m in messages) + _tokens(json.dumps(request.get("tools") or []))
    completion_tokens = _tokens(json.dumps(message))
    if finish == "length" and request.get("max_tokens"):
        completion_tokens = int(request["max_tokens"])
    return 200, {
        "id": f"chatcmpl-fake-{counter:06d}", "object": "chat.completion", "created": 1_763_700_000 + counter,
        "model": request.get("model") or "gpt-4o-mini", "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake-model/1"
    counter = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        except ValueError:
            self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
            return
        with _Handler.lock:
            _Handler.counter += 1
            n = _Handler.counter
        status, payload = completion(body, n)
        self._send(status, payload)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # quiet: the agent's output is what matters


def start(port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve on 127.0.0.1:``port`` (0 = any free port) in a daemon thread; returns (server, base_url)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=server.serve_forever, name="fake-model", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve canned OpenAI chat completions on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    server, url = start(args.port)
    print(f"fake model at {url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
