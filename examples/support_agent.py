"""A customer-support agent traced with OpenInference, for trying tracesieve on realistic traces offline.

The agent is ordinary code around the real OpenAI Python SDK: it retrieves help-centre
articles, asks the model, runs the tools the model calls, and answers. The SDK is
instrumented with ``openinference-instrumentation-openai``, so every model call is a
real OpenInference LLM span (messages, tool definitions with their JSON schema, tool
calls, token counts); the agent adds AGENT, RETRIEVER and TOOL spans itself. The model
is ``fake_model_server.py`` beside this file, started on a free loopback port, so no
network or API key is needed and every run is the same.

By default it plays a day's worth of conversations: good ones, and the failures
tracesieve exists to catch (a failing refund tool followed by a confirmation e-mail,
tool arguments that break the declared schema, an answer cut at max_tokens, a refusal
with the right tool at hand, a citation of an article that was never retrieved, an
answer after an empty retrieval, a tool-call loop, a rate-limited model call, a slow
tool, prose where JSON was required)::

    tracesieve serve --config examples/support_config.yaml &
    python examples/support_agent.py                    # the whole mix
    python examples/support_agent.py --list             # what is in it
    python examples/support_agent.py --question "Where is my order ORD-1001?"

With ``TRACESIEVE_CASE_INPUT`` set (``tracesieve gate`` does), it answers that one
input's ``user_message``. The exporter follows the standard OTel variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` = grpc | http/protobuf,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``); the default is gRPC to 127.0.0.1:4317.
Needs ``pip install 'tracesieve[examples]'`` (openai, openinference-instrumentation-openai,
the OTLP exporters).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import openai
from openinference.instrumentation import get_attributes_from_context, using_attributes
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_model_server  # noqa: E402  (the sibling module, whichever directory we run from)

SYSTEM_PROMPT = ("You are the support assistant of Blendr, a kitchen-appliance shop. Answer from the "
                 "help-centre articles below and cite them as [doc-id]. Use the tools to look up or change "
                 "orders; never promise what a tool did not confirm.")
PROMPT_VERSION = "support-v7"
MAX_STEPS = 8

# --- the help centre (what the retriever searches) ---------------------------------------------

ARTICLES = {
    "doc-shipping-01": ("Orders ship within 2 business days; delivery in the EU takes 2-4 business days.",
                        ("order", "ship", "deliver", "track", "parcel", "stock")),
    "doc-refunds-01": ("Refunds go back to the original payment method within 5 business days of receiving "
                       "the item.", ("refund",)),
    "doc-hours-01": ("Support is open Monday to Friday, 8:00-20:00 CET.", ("hours",)),
    "doc-warranty-01": ("ProBlend 500: the motor is under warranty for 5 years, jug, blades and seals for 2 "
                        "years.", ("problend",)),
    "doc-subscriptions-01": ("Blendr+ subscriptions can be cancelled any time, by the customer under Account "
                             "> Plan or by support with the cancel_subscription tool.", ("subscription",)),
    "doc-escalation-01": ("A customer can ask for a human agent at any time; a person answers within 4 hours.",
                          ("human",)),
}

# --- the tools the model may call (declared to the model with their JSON schema) ---------------

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "lookup_order", "description": "Find an order by its id (ORD-NNNN).",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^ORD-[0-9]{4}$"}},
                       "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "track_shipment", "description": "Where the parcel of an order is now.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                       "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "refund_payment", "description": "Refund an order to the original payment method. Irreversible.",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "string"}, "amount": {"type": "number", "exclusiveMinimum": 0},
            "reason": {"type": "string", "enum": ["damaged", "late", "wrong_item", "other"]}},
            "required": ["order_id", "amount", "reason"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "send_email", "description": "Send an e-mail to the customer. Cannot be unsent.",
        "parameters": {"type": "object", "properties": {
            "to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "subject", "body"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "cancel_subscription", "description": "Cancel the customer's Blendr+ subscription.",
        "parameters": {"type": "object", "properties": {"customer_email": {"type": "string"}},
                       "required": ["customer_email"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "check_inventory", "description": "Units in stock for a product SKU (warehouse API).",
        "parameters": {"type": "object", "properties": {"sku": {"type": "string"}},
                       "required": ["sku"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


class ToolFailed(Exception):
    """A backend behind a tool failed; the agent reports it to the model as the tool's result."""


def run_tool(name: str, args: dict[str, Any]) -> Any:
    """The tools' backends (canned, like the model): each returns JSON-able data or raises ToolFailed."""
    if name == "lookup_order":
        return {"order_id": args["order_id"], "status": "shipped" if args["order_id"] == "ORD-1001" else "packing",
                "items": [{"sku": "PB-500", "name": "ProBlend 500", "qty": 1}], "total_eur": 49.9}
    if name == "track_shipment":
        moving = args["order_id"] != "ORD-1005"
        return {"order_id": args["order_id"], "carrier": "DHL",
                "status": "in_transit" if moving else "awaiting_pickup", "last_scan": "2026-11-20T16:05:00Z"}
    if name == "refund_payment":
        raise ToolFailed(f"payment gateway timed out after 30s refunding {args['order_id']} (HTTP 504)")
    if name == "send_email":
        return {"queued": True, "message_id": "msg-58213"}
    if name == "cancel_subscription":
        return {"cancelled": True}
    if name == "check_inventory":
        time.sleep(1.2)  # the warehouse API is slow today: a latency breach with support_config.yaml
        return {"sku": args["sku"], "available": 14, "warehouse": "Leipzig"}
    raise ToolFailed(f"unknown tool {name}")


# --- the conversations the default run plays ---------------------------------------------------

@dataclass(frozen=True)
class Conversation:
    question: str
    session: str
    user: str
    model: str = "gpt-4o-mini"
    task: str = "chat"  # "chat": tools + retrieval; "triage": one JSON-only call
    feedback: str | None = None  # the customer's thumbs-up/-down on the answer, recorded on the turn


CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation("Where is my order ORD-1001?", "sess-1001", "cust-0007"),
    Conversation("How long do refunds take?", "sess-1002", "cust-0013"),
    Conversation("What are your support hours?", "sess-1003", "cust-0021"),
    Conversation("Can you track ORD-1007 for me?", "sess-1004", "cust-0034"),
    Conversation("Please refund order ORD-1003, the jug arrived cracked. My email is jane.doe@example.com",
                 "sess-1005", "cust-0042", model="gpt-4o"),
    Conversation("Do you ship to Canada?", "sess-1005", "cust-0042", model="gpt-4o"),
    Conversation("Look up order 1004 please", "sess-1006", "cust-0055"),
    Conversation("Explain the warranty terms for the ProBlend 500 in detail", "sess-1007", "cust-0061"),
    Conversation("Cancel my subscription please, my account is ana.silva@example.org", "sess-1008", "cust-0070"),
    Conversation("Do you ship to Canada?", "sess-1009", "cust-0077"),
    Conversation("What is the warranty on the X200 blender?", "sess-1010", "cust-0081"),
    Conversation("Has my parcel ORD-1005 moved yet?", "sess-1011", "cust-0090"),
    Conversation("I need to talk to a human about ORD-1006", "sess-1012", "cust-0093", model="gpt-4o"),
    Conversation("Is the ProBlend 500 in stock?", "sess-1013", "cust-0101"),
    Conversation("Summarize this ticket: lid of my ProBlend 500 snapped after a week, I want a new one.",
                 "sess-1014", "cust-0102", task="triage"),
    Conversation("Where is my order ORD-1001?", "sess-1015", "cust-0110", feedback="thumbs_up"),
    Conversation("How long do refunds take?", "sess-1016", "cust-0113"),
    Conversation("How do I descale my ProBlend 500?", "sess-1017", "cust-0120", feedback="thumbs_down"),
    Conversation("What are your support hours?", "sess-1018", "cust-0121", feedback="thumbs_up"),
)


def session_attributes() -> dict[str, Any]:
    """session.id / user.id of the conversation in progress, for the spans the agent makes itself.

    ``using_attributes`` puts them on the instrumentor's LLM spans; our own spans copy them, so a session's
    every span is one ``WHERE session_id = ...`` away.
    """
    return {k: v for k, v in get_attributes_from_context() if k in ("session.id", "user.id")}


# --- the agent ---------------------------------------------------------------------------------

class SupportAgent:
    def __init__(self, client: openai.OpenAI, tracer: trace.Tracer) -> None:
        self.client = client
        self.tracer = tracer

    def answer(self, conv: Conversation) -> str:
        """Answer one question inside an AGENT span; model errors mark the span and return an empty answer."""
        with using_attributes(session_id=conv.session, user_id=conv.user,
                              prompt_template_version=PROMPT_VERSION), \
                self.tracer.start_as_current_span("support_agent", record_exception=False,
                                                  set_status_on_exception=False) as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            root.set_attributes(session_attributes())
            root.set_attribute("input.value", conv.question)
            root.set_attribute("agent.name", "blendr-support")
            root.set_attribute("agent.version", "2.3.0")
            try:
                answer = self._triage(conv) if conv.task == "triage" else self._chat(conv)
            except openai.APIError as exc:
                root.record_exception(exc)
                root.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:300]))
                return ""
            root.set_attribute("output.value", answer)
            if conv.feedback:
                root.set_attribute("user_feedback.label", conv.feedback)
                root.set_attribute("user_feedback.comment", "from the chat widget's thumbs buttons")
            root.set_status(Status(StatusCode.OK))
            return answer

    def _chat(self, conv: Conversation) -> str:
        docs = self._retrieve(conv.question)
        context = "\n".join(f"[{doc_id}] {text}" for doc_id, text, _ in docs) or "(no matching articles)"
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"{SYSTEM_PROMPT}\n\nHelp-centre articles:\n{context}"},
            {"role": "user", "content": conv.question}]
        for _ in range(MAX_STEPS):
            response = self.client.chat.completions.create(
                model=conv.model, messages=messages, tools=TOOLS, max_tokens=400, temperature=0)
            message = response.choices[0].message
            if not message.tool_calls:
                return message.content or ""
            messages.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls:
                result = self._tool(call.function.name, call.function.arguments)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
        return "Sorry, this is taking longer than expected; a colleague will follow up by e-mail."

    def _triage(self, conv: Conversation) -> str:
        """One JSON-only call: the ticket summary the help desk files (response_format json_object)."""
        response = self.client.chat.completions.create(
            model=conv.model, temperature=0, max_tokens=200, response_format={"type": "json_object"},
            messages=[{"role": "system", "content": 'Return JSON: {"product": str, "issue": str, "wants": str}.'},
                      {"role": "user", "content": conv.question}])
        return response.choices[0].message.content or ""

    def _retrieve(self, question: str) -> list[tuple[str, str, float]]:
        with self.tracer.start_as_current_span("search_help_centre") as span:
            span.set_attribute("openinference.span.kind", "RETRIEVER")
            span.set_attributes(session_attributes())
            span.set_attribute("input.value", question)
            words = question.lower()
            hits = []
            for doc_id, (text, keywords) in ARTICLES.items():
                n = sum(1 for k in keywords if k in words)
                if n:
                    hits.append((doc_id, text, round(min(0.62 + 0.12 * n, 0.97), 2)))
            hits.sort(key=lambda h: -h[2])
            for i, (doc_id, text, score) in enumerate(hits[:3]):
                span.set_attribute(f"retrieval.documents.{i}.document.id", doc_id)
                span.set_attribute(f"retrieval.documents.{i}.document.content", text)
                span.set_attribute(f"retrieval.documents.{i}.document.score", score)
            return hits[:3]

    def _tool(self, name: str, raw_arguments: str) -> Any:
        """Validate the model's arguments against the declared schema, then run the tool in a TOOL span.

        Arguments that do not fit never reach the backend: the model gets the validation error back as the
        tool result and usually retries (tracesieve still flags the bad call on the LLM span).
        """
        try:
            args = json.loads(raw_arguments or "{}")
            jsonschema.validate(args, SCHEMAS[name])
        except (ValueError, KeyError, jsonschema.ValidationError) as exc:
            detail = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
            return {"error": f"invalid arguments for {name}: {detail}"}
        with self.tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False) as span:
            span.set_attribute("openinference.span.kind", "TOOL")
            span.set_attributes(session_attributes())
            span.set_attribute("tool.name", name)
            span.set_attribute("tool.description", next(t["function"]["description"] for t in TOOLS
                                                         if t["function"]["name"] == name))
            span.set_attribute("input.value", json.dumps(args))
            span.set_attribute("input.mime_type", "application/json")
            try:
                result = run_tool(name, args)
            except ToolFailed as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                return {"error": str(exc)}
            span.set_attribute("output.value", json.dumps(result))
            span.set_attribute("output.mime_type", "application/json")
            span.set_status(Status(StatusCode.OK))
            return result


# --- wiring ------------------------------------------------------------------------------------

def exporter() -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    return HttpExporter()


def conversations_to_run(args: argparse.Namespace) -> list[Conversation]:
    if args.question:
        return [Conversation(args.question, "sess-cli", "cust-cli")]
    case_input = os.environ.get("TRACESIEVE_CASE_INPUT")
    if case_input:
        try:
            data = json.loads(case_input)
        except ValueError:
            data = case_input
        question = str(data.get("user_message") if isinstance(data, dict) else data)
        case_id = os.environ.get("TRACESIEVE_CASE_ID", "case")
        return [Conversation(question, f"sess-{case_id}", "cust-gate")]
    return list(CONVERSATIONS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", help="ask only this (default: the whole mix of conversations)")
    parser.add_argument("--list", action="store_true", help="print the conversations and the model's scripts")
    parser.add_argument("--model-url", help="an OpenAI-compatible base URL, key in OPENAI_API_KEY "
                                            "(default: start the fake model on a free loopback port)")
    args = parser.parse_args()
    if args.list:
        for conv in CONVERSATIONS:
            script = fake_model_server.pick_script([{"role": "user", "content": conv.question}])
            print(f"{script.name:<26} {conv.question}" + (f"  # {script.notes}" if script.notes else ""))
        return 0

    server = None
    base_url = args.model_url
    if base_url is None:
        server, base_url = fake_model_server.start()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "blendr-support"),
                                "service.version": "2.3.0", "deployment.environment": "demo"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter(), schedule_delay_millis=200))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    api_key = os.environ.get("OPENAI_API_KEY", "not-needed-by-the-fake-model") if args.model_url else "fake"
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    agent = SupportAgent(client, provider.get_tracer("blendr.support"))
    try:
        for conv in conversations_to_run(args):
            answer = agent.answer(conv)
            print(f"[{conv.session}] {conv.question}\n    -> {answer or '(no answer: the model call failed)'}",
                  flush=True)
    finally:
        OpenAIInstrumentor().uninstrument()
        provider.shutdown()  # flushes every span to the collector before exit
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
