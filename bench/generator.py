"""Seeded generator of realistic LLM-agent traces as OTLP protobuf.

Each trace is what an OpenInference-instrumented RAG agent exports for one user turn::

    AGENT  support_agent                       input.value = user message, output.value = answer
      CHAIN  rag_chain
        RETRIEVER  vector_search               retrieval.documents.0-4.document.{id,content,score,metadata}
        LLM  ChatCompletion (tool call)        llm.input_messages / output_messages / tools / token counts
        TOOL  <tool name>                      input.value = JSON arguments, output.value = JSON result
        [LLM + TOOL again in ~1 trace in 4]
        LLM  ChatCompletion (final answer)     cites the retrieved document ids

about 6.3 spans and 4-5 KB of protobuf per span on average.  Content varies (ten
topics, fourteen tools, generated documents and questions) so compression ratios
are realistic; about one trace in five carries an e-mail address and/or a phone
number in the user message.

``failure_rate`` makes that share of traces carry one failure from ``FAILURES``
(the failure_mode a detector should report is ``EXPECTED_MODE[kind]``).
``genai_share`` (with ``genai_variant=True``) emits that share of traces with the
OTel GenAI conventions (``gen_ai.*`` attributes, JSON message attributes, no
``openinference.span.kind``) instead.

API::

    make_trace(rng, *, now_ns, failure=None, genai=False) -> list[Span]
    make_requests(n_traces, *, seed=1, traces_per_request=8, failure_rate=0.0,
                  service="bench-agent", genai_variant=False, genai_share=0.3,
                  manifest=None) -> Iterator[ExportTraceServiceRequest]
    reidentify(payload, trace_ids, rng) -> (payload, new_trace_ids)

``manifest`` (a dict) is filled with ``trace_id_hex -> failure kind or None``.
``reidentify`` gives a serialized request fresh trace ids by byte substitution
(trace ids are random 16-byte strings, so they occur nowhere else), which lets a
long benchmark reuse a pre-generated pool without re-encoding.

Run ``python bench/generator.py`` for a self-check: sizes, per-kind counts, speed.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = [
    "FAILURES", "EXPECTED_MODE", "make_trace", "make_requests", "reidentify", "id_positions",
    "trace_ids_of", "span_count",
]

# failure kind -> failure_mode (DESIGN.md taxonomy) a detector should report for it
EXPECTED_MODE = {
    "tool_error": "tool_invocation",
    "truncation": "truncation",
    "empty_retrieval": "retrieval_miss",
    "bad_tool_args": "tool_argument",
    "llm_error": "llm_error",
    "slow_tool": "latency_breach",
    "loop": "loop",
}
FAILURES = tuple(EXPECTED_MODE)

MS = 1_000_000  # ns per ms

# --------------------------------------------------------------------------- vocab

_FIRST = ["Maria", "James", "Aiko", "Olu", "Priya", "Lukas", "Sofia", "Chen", "Fatima", "Diego",
          "Hannah", "Mateo", "Ingrid", "Kwame", "Elena", "Tariq", "Noor", "Pavel", "Grace", "Ravi"]
_LAST = ["Garcia", "Smith", "Tanaka", "Adeyemi", "Sharma", "Weber", "Rossi", "Wang", "Haddad", "Lopez",
         "Johansson", "Mensah", "Petrova", "Khan", "Novak", "Okafor", "Silva", "Kim", "Dubois", "Iyer"]
_MAIL_DOMAINS = ["gmail.com", "outlook.com", "proton.me", "yahoo.co.uk", "fastmail.com", "web.de", "icloud.com"]
_CITIES = ["Lisbon", "Osaka", "Nairobi", "Denver", "Kraków", "Bogotá", "Toronto", "Lyon", "Pune", "Melbourne",
           "Hamburg", "Austin", "Seoul", "Dublin", "Cape Town", "Montréal"]
_CARRIERS = ["UPS", "DHL", "FedEx", "USPS", "PostNL", "Royal Mail"]
_ADJ = ["standard", "premium", "annual", "monthly", "regional", "legacy", "new", "enterprise", "basic",
        "extended", "temporary", "international", "domestic", "priority", "discounted", "archived"]
_FILLER = [
    "This applies to all accounts opened after the policy change.",
    "Exceptions require written approval from a team lead.",
    "Customers are notified by e-mail once the change takes effect.",
    "The same rule applies to orders placed through partner stores.",
    "Processing normally takes three to five business days.",
    "Please note that weekends and public holidays are not counted.",
    "Requests submitted after 6 pm are handled the next business day.",
    "A confirmation number is issued for every completed request.",
    "The limit resets at the start of each calendar month.",
    "Older records are archived after eighteen months and can be restored on request.",
    "Fees are shown before confirmation and are never charged retroactively.",
    "Agents should verify the customer's identity before sharing account details.",
    "If the system shows a conflicting status, the warehouse record takes precedence.",
    "Escalations are tracked in the ticketing system with the original reference.",
    "Partial refunds are calculated on the item price, excluding shipping.",
    "The rule was last reviewed by the compliance team in the second quarter.",
]

# topic: system prompt, question templates, document title/sentence templates, tools offered
_TOPICS = [
    {
        "name": "orders",
        "agent": "order-support-agent",
        "system": "You are ShopCo's order support assistant. Answer questions about orders, deliveries and returns "
                  "using only the provided context and tools. Always cite the knowledge-base article ids you used "
                  "in square brackets, e.g. [kb-1234]. Never promise refunds above the order value. If the customer "
                  "asks for something outside your scope, hand over to a human agent. Keep answers under 120 words, "
                  "be polite and concise, and do not reveal internal notes.",
        "questions": [
            "Where is my order {order}? It was supposed to arrive on {date} and I still have nothing.",
            "I received the wrong size for order {order}. Can I exchange it or do I need to return it first?",
            "Can you check the status of order {order}? The tracking page has not updated since {date}.",
            "My package for order {order} arrived damaged. What are my options for a {adj} replacement?",
            "I was charged twice for order {order}. Could you look into it and tell me what happens next?",
        ],
        "titles": ["Delivery times for {adj} shipping", "Returns and exchanges", "Damaged items policy",
                   "Duplicate charges and refunds", "Tracking updates explained", "Order cancellation window"],
        "facts": [
            "{adj} shipping orders are delivered within {n} business days of dispatch.",
            "Returns are accepted within {n} days of delivery if the item is unused.",
            "Damaged items can be replaced free of charge when reported within {n} days.",
            "Duplicate charges are reversed automatically within {n} business days.",
            "Tracking information may take up to {n} hours to appear after dispatch.",
            "Orders can be cancelled free of charge until they reach the {adj} warehouse.",
        ],
        "tools": ["lookup_order", "track_shipment", "refund_payment", "create_ticket", "send_email"],
    },
    {
        "name": "travel",
        "agent": "travel-concierge",
        "system": "You are a travel concierge for WanderLine. Help travellers search flights, understand fare rules "
                  "and plan trips. Use the search_flights tool for live availability and the knowledge base for "
                  "fare rules; cite article ids in square brackets. Prices must come from tool results only, never "
                  "from memory. Mention baggage allowances when relevant and always state the time zone of times.",
        "questions": [
            "I need a flight from {city} to {city2} on {date}, preferably in the morning. What are my options?",
            "What is the baggage allowance on a {adj} fare from {city} to {city2}?",
            "Can I change my {city} to {city2} flight on {date} without paying a fee?",
            "Is there a direct connection between {city} and {city2} next week, and how long does it take?",
        ],
        "titles": ["Fare rules: {adj} tickets", "Baggage allowance", "Changes and cancellations",
                   "Connecting flights and layovers", "Travel documents checklist"],
        "facts": [
            "{adj} fares include one cabin bag of up to {n} kg.",
            "Changes made more than {n} days before departure are free on flexible fares.",
            "The minimum connection time at hub airports is {n} minutes.",
            "Checked baggage over {n} kg is charged per kilogram at the airport.",
            "Passengers must check in at least {n} minutes before an international departure.",
        ],
        "tools": ["search_flights", "get_weather", "get_exchange_rate", "send_email"],
    },
    {
        "name": "banking",
        "agent": "banking-assistant",
        "system": "You are the virtual assistant of Northwind Bank. You can look up balances and recent activity "
                  "through tools after the customer is authenticated. Explain fees and limits using the knowledge "
                  "base and cite it with [kb-id]. Never ask for full card numbers or passwords. For disputes, open "
                  "a ticket and give the customer the ticket number. Use a neutral, reassuring tone.",
        "questions": [
            "What's the balance on account {account}? I think a transfer from {date} is missing.",
            "Why was I charged a {adj} fee on my account {account} this month?",
            "I want to dispute a card payment of {amount} EUR from {date}. How do I do that?",
            "What is the daily transfer limit for a {adj} account like {account}?",
        ],
        "titles": ["Account fees schedule", "Transfer limits", "Card disputes", "{adj} account features",
                   "Pending transactions"],
        "facts": [
            "The {adj} account has a monthly fee of {n} EUR, waived above a balance of 2,500 EUR.",
            "Daily outgoing transfers are limited to {n},000 EUR unless raised in the app.",
            "Card disputes must be raised within {n} days of the statement date.",
            "Pending transactions usually settle within {n} business days.",
        ],
        "tools": ["get_account_balance", "create_ticket", "get_exchange_rate", "send_email"],
    },
    {
        "name": "devops",
        "agent": "infra-copilot",
        "system": "You are an infrastructure copilot for the platform team. Answer questions about deployments, "
                  "incidents and runbooks. Use run_sql against the read-only metrics warehouse when numbers are "
                  "needed and create_ticket for follow-ups. Cite runbook ids in square brackets. Never suggest "
                  "destructive commands without a rollback step, and flag anything that touches production.",
        "questions": [
            "Error rate on the {adj} checkout service jumped after the {date} deploy. What does the runbook say?",
            "How many 5xx responses did the API gateway return in the last {n} hours?",
            "What is the rollback procedure for a failed {adj} database migration?",
            "Which services breached their latency SLO on {date}?",
        ],
        "titles": ["Runbook: {adj} deployment rollback", "Incident severity levels", "Latency SLOs",
                   "Database migration checklist", "On-call escalation"],
        "facts": [
            "Rollbacks of {adj} deployments must complete within {n} minutes of detection.",
            "A SEV-2 incident is declared when the error rate stays above {n}% for five minutes.",
            "The p99 latency objective for public APIs is {n}00 ms over a 28-day window.",
            "Migrations are applied in {n} phases: expand, migrate, contract.",
        ],
        "tools": ["run_sql", "create_ticket", "send_email", "query_inventory"],
    },
    {
        "name": "hr",
        "agent": "people-ops-bot",
        "system": "You are the People Ops assistant. Answer employee questions about leave, benefits and expenses "
                  "from the policy handbook, citing policy ids in square brackets. Use check_policy for the exact "
                  "wording and create_ticket when a manager's approval is needed. Do not give legal or tax advice "
                  "and do not share other employees' information.",
        "questions": [
            "How many days of {adj} leave do I have left this year? I took some in {date}.",
            "Can I expense a {adj} train ticket to the {city} office?",
            "What is the parental leave policy for employees based in {city}?",
            "Do I need my manager's approval to work remotely from {city} for {n} weeks?",
        ],
        "titles": ["Annual leave policy", "Travel and expenses", "Parental leave", "Remote work abroad",
                   "{adj} benefits overview"],
        "facts": [
            "Full-time employees accrue {n} days of annual leave per year.",
            "Train travel in {adj} class is reimbursed for journeys over {n} hours.",
            "Parental leave is {n} weeks at full pay for all parents.",
            "Remote work abroad is allowed for up to {n} weeks per year with approval.",
        ],
        "tools": ["check_policy", "create_ticket", "send_email"],
    },
    {
        "name": "insurance",
        "agent": "claims-assistant",
        "system": "You are a claims assistant for Harbor Insurance. Guide customers through filing and tracking "
                  "claims, using only the policy documents provided and the claims tools. Cite document ids in "
                  "square brackets. Never confirm coverage for a specific claim; say that an adjuster decides. "
                  "Collect the minimum personal data required and remind customers to upload photos.",
        "questions": [
            "I had a water leak on {date}. Is that covered by my {adj} home policy {policy}?",
            "What's the status of my claim {ticket}? I filed it on {date}.",
            "How long does it take to get paid after a {adj} car claim is approved?",
            "Which documents do I need for a theft claim on policy {policy}?",
        ],
        "titles": ["Home policy: water damage", "Claim processing times", "{adj} motor cover",
                   "Required documents for claims", "Excess and deductibles"],
        "facts": [
            "Sudden water damage is covered under the {adj} home policy; gradual leaks are excluded.",
            "Approved claims are paid within {n} business days.",
            "A police report is required for theft claims above {n}00 EUR.",
            "The standard excess is {n}0 EUR per claim.",
        ],
        "tools": ["check_policy", "create_ticket", "send_email", "refund_payment"],
    },
    {
        "name": "inventory",
        "agent": "ops-inventory-agent",
        "system": "You are an operations assistant for a retail chain. Answer stock and replenishment questions "
                  "using query_inventory and the operations handbook; cite handbook ids in square brackets. Report "
                  "quantities exactly as returned by tools. When stock is below the reorder point, suggest a "
                  "purchase order but never place it yourself.",
        "questions": [
            "How many units of SKU {sku} do we have in the {city} warehouse?",
            "Is SKU {sku} below its reorder point anywhere? We have a {adj} promotion starting {date}.",
            "What is the lead time for restocking {sku} from the central warehouse?",
        ],
        "titles": ["Reorder points", "Warehouse transfers", "{adj} promotions playbook", "Stock counting"],
        "facts": [
            "The reorder point is {n} days of average demand plus safety stock.",
            "Inter-warehouse transfers take {n} business days.",
            "Cycle counts are performed every {n} weeks for fast movers.",
        ],
        "tools": ["query_inventory", "create_ticket", "send_email", "run_sql"],
    },
    {
        "name": "billing",
        "agent": "billing-helper",
        "system": "You are the billing helper for a SaaS product. Explain invoices, plans and payment failures, "
                  "using get_invoice and the billing knowledge base, and cite article ids in square brackets. "
                  "Refunds require a ticket unless the amount is under 50 USD. Amounts must be shown with their "
                  "currency. Do not discuss other customers' accounts.",
        "questions": [
            "Why is invoice {invoice} higher than last month? We are on the {adj} plan.",
            "Our card payment for invoice {invoice} failed on {date}. What should we do?",
            "Can we switch from monthly to {adj} billing and get a prorated credit?",
            "Please send a copy of invoice {invoice} to our finance team.",
        ],
        "titles": ["Plans and pricing", "Failed payments", "Proration rules", "Invoice copies",
                   "{adj} plan limits"],
        "facts": [
            "Seats added mid-cycle are prorated to the day and appear on the next invoice.",
            "Failed payments are retried {n} times over a week before the account is paused.",
            "The {adj} plan includes {n}0 seats and priority support.",
            "Annual billing saves {n}% compared to monthly billing.",
        ],
        "tools": ["get_invoice", "refund_payment", "send_email", "create_ticket"],
    },
    {
        "name": "health",
        "agent": "clinic-scheduler",
        "system": "You are a scheduling assistant for CityCare clinics. Book, move and explain appointments using "
                  "schedule_appointment and the clinic handbook; cite handbook ids in square brackets. You do not "
                  "give medical advice; for urgent symptoms tell the patient to call emergency services. Confirm "
                  "the date, time and department of every booking.",
        "questions": [
            "I need a {adj} appointment with dermatology in {city} around {date}.",
            "Can I move my appointment from {date} to the following week?",
            "What should I bring to my first visit at the {city} clinic?",
        ],
        "titles": ["Booking rules", "Cancellation policy", "First visit checklist", "{adj} appointments"],
        "facts": [
            "Appointments can be cancelled free of charge up to {n} hours in advance.",
            "First visits last about {n}0 minutes including registration.",
            "{adj} appointments are offered on weekday evenings until 8 pm.",
        ],
        "tools": ["schedule_appointment", "send_email", "create_ticket"],
    },
    {
        "name": "weather",
        "agent": "trip-planner",
        "system": "You are a trip planning assistant. Combine live weather from get_weather, exchange rates from "
                  "get_exchange_rate and the destination guides in the knowledge base (cite guide ids in square "
                  "brackets) to suggest plans. Give temperatures in the unit the traveller uses and mention "
                  "when a forecast is uncertain.",
        "questions": [
            "What will the weather be like in {city} on {date}? I'm deciding what to pack.",
            "Is {city} or {city2} better for a {adj} weekend trip next month?",
            "How much is 500 USD in the local currency in {city}, and is it expensive there?",
        ],
        "titles": ["Destination guide: {city}", "Packing for {adj} weather", "Local transport tips",
                   "Seasonal events"],
        "facts": [
            "{city} averages {n} rainy days in spring.",
            "Public transport day passes cost about {n} EUR in most European cities.",
            "The {adj} season brings festivals every weekend from May to September.",
        ],
        "tools": ["get_weather", "get_exchange_rate", "search_flights"],
    },
]

_ANSWER_OPENERS = ["Thanks for reaching out.", "Here is what I found.", "Good question.",
                   "I checked this for you.", "Sure, let me summarise.", "Happy to help with that."]
_ANSWER_CLOSERS = ["Let me know if there is anything else I can do.", "Is there anything else you need?",
                   "I hope this helps.", "Feel free to reply if you have more questions.", ""]

_SUBJECTS = ["Customers", "Account holders", "Members on the {adj} plan", "Employees", "Travellers", "Team leads",
             "New users", "Business customers", "Support agents", "Partners", "Students", "Guests",
             "Policyholders", "Administrators", "Owners of {adj} accounts", "Returning customers",
             "Contractors", "Residents of {city}", "Users who signed up before {date}", "Premium subscribers"]
_VERBS = ["can request", "must submit", "are entitled to", "may receive", "should confirm", "are not eligible for",
          "can schedule", "need written approval for", "can cancel", "will automatically get", "may apply for",
          "have to provide evidence for", "can track", "are charged for", "can transfer", "should contact us about",
          "must not share", "are reminded to check", "can upgrade to", "are offered"]
_OBJECTS = ["a full refund", "a replacement item", "an extension of the deadline", "priority handling",
            "a written confirmation", "a fee waiver", "a transfer to another {noun}", "a copy of the {noun}",
            "a discount of {n}%", "a callback from a specialist", "free return shipping", "a {adj} voucher",
            "a partial credit of {n} EUR", "a new {noun} number", "access to the {adj} portal",
            "a review of the {noun}", "an itemised statement", "a temporary hold on the {noun}",
            "the {adj} support line", "an exception to the {noun} rules", "a reimbursement of travel costs",
            "a second opinion", "a printed receipt", "a loyalty bonus of {n}0 points", "an upgrade at no cost"]
_CONDS = ["within {n} days of {event}", "if the {noun} was created after {date}",
          "unless the {noun} is marked as final", "when the {noun} exceeds {n}0 EUR",
          "provided that the request is made through the {channel}", "only once per {period}",
          "after identity verification", "as long as the {noun} is still open", "during business hours in {city}",
          "if the original {noun} is missing", "before {event}", "no later than {n} hours after {event}",
          "when a manager has signed off", "for {noun}s handled by the {city} office", "subject to a {n} EUR fee",
          "even if the {noun} was paid by card", "except during the {adj} sales period",
          "where local regulations in {city} allow it", "on presentation of the {noun} reference",
          "if fewer than {n} requests were made this year"]
_NOUNS = ["order", "booking", "invoice", "account", "policy", "ticket", "subscription", "shipment", "claim",
          "reservation", "contract", "payment", "appointment", "request", "delivery", "statement"]
_EVENTS = ["delivery", "the statement date", "purchase", "the incident", "check-in", "the renewal date",
           "the first payment", "the appointment", "dispatch", "the end of the billing cycle", "signature"]
_CHANNELS = ["mobile app", "web portal", "phone line", "customer e-mail address", "partner desk", "chat widget"]
_PERIODS = ["month", "quarter", "year", "billing cycle", "contract term"]
_ASIDES = ["Note:", "Important:", "In practice,", "As a rule,", "For clarity,", "Since {date},", "According to section {n},",
           "", "", "", ""]


def _fill(r, s):
    if "{" not in s:
        return s
    return _SLOT.sub(lambda m: _SLOTS[m.group(1)](r), s)


def _sentence(r):
    aside = r.choice(_ASIDES)
    s = f"{r.choice(_SUBJECTS)} {r.choice(_VERBS)} {r.choice(_OBJECTS)} {r.choice(_CONDS)}."
    if aside:
        s = f"{aside} {s[0].lower()}{s[1:]}"
    return _fill(r, s)



def _sku(rng):
    return f"SKU-{rng.randint(10000, 99999)}"


def _date(rng):
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


_SLOT = re.compile(r"\{(\w+)\}")
_SLOTS = {
    "order": lambda r: f"A-{r.randint(100000, 999999)}",
    "date": _date,
    "adj": lambda r: r.choice(_ADJ),
    "city": lambda r: r.choice(_CITIES),
    "city2": lambda r: r.choice(_CITIES),
    "account": lambda r: f"NW{r.randint(10**7, 10**8 - 1)}",
    "amount": lambda r: str(r.randint(10, 900)),
    "n": lambda r: str(r.randint(2, 30)),
    "policy": lambda r: f"HP-{r.randint(10000, 99999)}",
    "ticket": lambda r: f"CLM-{r.randint(10000, 99999)}",
    "sku": _sku,
    "invoice": lambda r: f"INV-{r.randint(2026000, 2026999)}",
    "noun": lambda r: r.choice(_NOUNS),
    "event": lambda r: r.choice(_EVENTS),
    "channel": lambda r: r.choice(_CHANNELS),
    "period": lambda r: r.choice(_PERIODS),
}


# name -> (description, json-schema parameters, args(rng), result(rng, args))
def _tool_catalog():
    def obj(props, required):
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

    s = {"type": "string"}
    return {
        "lookup_order": (
            "Look up an order by id and return its items, status and delivery estimate.",
            obj({"order_id": {"type": "string", "description": "Order id, e.g. A-123456"}}, ["order_id"]),
            lambda r: {"order_id": f"A-{r.randint(100000, 999999)}"},
            lambda r, a: {"order_id": a["order_id"], "status": r.choice(["shipped", "processing", "delivered", "on_hold"]),
                          "items": [{"sku": _sku(r), "qty": r.randint(1, 3), "price": round(r.uniform(5, 300), 2)}
                                    for _ in range(r.randint(1, 3))],
                          "estimated_delivery": _date(r), "carrier": r.choice(_CARRIERS)},
        ),
        "track_shipment": (
            "Return the latest tracking events of a parcel.",
            obj({"tracking_number": s, "carrier": {"type": "string", "enum": _CARRIERS}}, ["tracking_number", "carrier"]),
            lambda r: {"tracking_number": f"1Z{r.getrandbits(48):012X}", "carrier": r.choice(_CARRIERS)},
            lambda r, a: {"tracking_number": a["tracking_number"],
                          "events": [{"at": f"{_date(r)}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z",
                                      "location": r.choice(_CITIES),
                                      "status": r.choice(["in transit", "arrived at hub", "out for delivery",
                                                          "departed facility"])} for _ in range(r.randint(2, 4))]},
        ),
        "refund_payment": (
            "Refund (part of) a payment. Irreversible once executed.",
            obj({"order_id": s, "amount": {"type": "number", "minimum": 0}, "reason": s}, ["order_id", "amount", "reason"]),
            lambda r: {"order_id": f"A-{r.randint(100000, 999999)}", "amount": round(r.uniform(5, 200), 2),
                       "reason": r.choice(["damaged item", "duplicate charge", "late delivery", "goodwill"])},
            lambda r, a: {"refund_id": f"rf_{r.getrandbits(40):010x}", "status": "succeeded", "amount": a["amount"],
                          "currency": "EUR"},
        ),
        "send_email": (
            "Send an e-mail to the customer or to an internal team.",
            obj({"to": s, "subject": s, "body": s}, ["to", "subject", "body"]),
            lambda r: {"to": r.choice(["support-team", "finance-team", "customer", "on-call"]),
                       "subject": r.choice(["Your request", "Follow-up", "Summary of our conversation", "Action needed"]),
                       "body": " ".join(_sentence(r) for _ in range(2))},
            lambda r, a: {"message_id": f"<{r.getrandbits(64):016x}@mail.internal>", "queued": True},
        ),
        "get_weather": (
            "Current conditions and a 3-day forecast for a city.",
            obj({"city": s, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
            lambda r: {"city": r.choice(_CITIES), "unit": r.choice(["celsius", "fahrenheit"])},
            lambda r, a: {"city": a["city"], "now": {"temp": r.randint(-5, 35), "conditions": r.choice(
                ["sunny", "cloudy", "light rain", "windy", "snow showers"])},
                          "forecast": [{"day": i, "high": r.randint(0, 38), "low": r.randint(-8, 20)} for i in range(3)]},
        ),
        "search_flights": (
            "Search available flights between two airports on a date.",
            obj({"origin": s, "destination": s, "date": {"type": "string", "format": "date"},
                 "cabin": {"type": "string", "enum": ["economy", "premium", "business"]}}, ["origin", "destination", "date"]),
            lambda r: {"origin": r.choice(_CITIES), "destination": r.choice(_CITIES), "date": _date(r),
                       "cabin": r.choice(["economy", "premium", "business"])},
            lambda r, a: {"flights": [{"flight": f"{r.choice(['WL', 'NX', 'TP', 'LH'])}{r.randint(100, 9999)}",
                                       "depart": f"{r.randint(5, 22):02d}:{r.choice(['05', '20', '35', '50'])}",
                                       "duration_min": r.randint(55, 720), "stops": r.randint(0, 2),
                                       "price": {"amount": r.randint(80, 1400), "currency": "EUR"}}
                                      for _ in range(r.randint(2, 4))]},
        ),
        "get_account_balance": (
            "Return the balance and last transactions of an authenticated customer's account.",
            obj({"account_id": s, "include_pending": {"type": "boolean"}}, ["account_id"]),
            lambda r: {"account_id": f"NW{r.randint(10**7, 10**8 - 1)}", "include_pending": r.random() < 0.5},
            lambda r, a: {"account_id": a["account_id"], "balance": {"amount": round(r.uniform(-200, 20000), 2),
                                                                     "currency": "EUR"},
                          "transactions": [{"date": _date(r), "amount": round(r.uniform(-900, 900), 2),
                                            "description": r.choice(["CARD PAYMENT", "SEPA TRANSFER", "ATM WITHDRAWAL",
                                                                     "DIRECT DEBIT", "FEE"])} for _ in range(r.randint(2, 5))]},
        ),
        "create_ticket": (
            "Create a support ticket for a human team.",
            obj({"title": s, "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
                 "description": s}, ["title", "priority"]),
            lambda r: {"title": r.choice(["Customer dispute", "Follow-up needed", "Escalation", "Manual review"]),
                       "priority": r.choice(["low", "normal", "high"]), "description": _sentence(r)},
            lambda r, a: {"ticket_id": f"TCK-{r.randint(10000, 99999)}", "queue": r.choice(["tier2", "billing", "claims", "ops"]),
                          "sla_hours": r.choice([4, 8, 24, 48])},
        ),
        "query_inventory": (
            "Stock on hand, reserved and in transit for a SKU, per warehouse.",
            obj({"sku": s, "warehouse": s}, ["sku"]),
            lambda r: {"sku": _sku(r), "warehouse": r.choice(_CITIES)},
            lambda r, a: {"sku": a["sku"], "warehouses": [{"name": r.choice(_CITIES), "on_hand": r.randint(0, 900),
                                                           "reserved": r.randint(0, 50), "in_transit": r.randint(0, 200),
                                                           "reorder_point": r.randint(20, 150)} for _ in range(r.randint(1, 3))]},
        ),
        "get_exchange_rate": (
            "Latest exchange rate between two ISO currencies.",
            obj({"base": {"type": "string", "pattern": "^[A-Z]{3}$"}, "quote": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                ["base", "quote"]),
            lambda r: {"base": r.choice(["USD", "EUR", "GBP"]), "quote": r.choice(["JPY", "CAD", "INR", "BRL", "ZAR", "PLN"])},
            lambda r, a: {"base": a["base"], "quote": a["quote"], "rate": round(r.uniform(0.5, 160), 4), "as_of": _date(r)},
        ),
        "check_policy": (
            "Return the exact text of a policy section.",
            obj({"policy_id": s, "section": s}, ["policy_id"]),
            lambda r: {"policy_id": f"POL-{r.randint(100, 999)}", "section": f"{r.randint(1, 9)}.{r.randint(1, 9)}"},
            lambda r, a: {"policy_id": a["policy_id"], "section": a.get("section", "1.1"),
                          "text": " ".join(_sentence(r) for _ in range(3)), "effective_from": _date(r)},
        ),
        "schedule_appointment": (
            "Book or move an appointment in a clinic department.",
            obj({"patient_id": s, "department": s, "date": {"type": "string", "format": "date"}},
                ["patient_id", "department", "date"]),
            lambda r: {"patient_id": f"P{r.randint(100000, 999999)}", "department": r.choice(
                ["dermatology", "cardiology", "general practice", "physiotherapy"]), "date": _date(r)},
            lambda r, a: {"appointment_id": f"APT-{r.randint(10000, 99999)}", "date": a["date"],
                          "time": f"{r.randint(8, 18):02d}:{r.choice(['00', '15', '30', '45'])}", "room": r.randint(100, 450)},
        ),
        "run_sql": (
            "Run a read-only SQL query against the metrics warehouse.",
            obj({"query": s, "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}, ["query"]),
            lambda r: {"query": r.choice([
                "SELECT service, count(*) FROM http_requests WHERE status >= 500 AND ts > now() - INTERVAL 6 HOUR GROUP BY 1",
                "SELECT service, quantile_cont(latency_ms, 0.99) FROM http_requests WHERE ts::date = current_date GROUP BY 1",
                "SELECT deploy_id, started_at, status FROM deploys ORDER BY started_at DESC",
                "SELECT sku, sum(qty) FROM order_lines WHERE ordered_at > now() - INTERVAL 7 DAY GROUP BY 1 ORDER BY 2 DESC"]),
                "limit": r.choice([10, 50, 100])},
            lambda r, a: {"columns": ["key", "value"], "rows": [[r.choice(["checkout", "gateway", "search", "auth", "cart"]),
                                                                 r.randint(0, 50000)] for _ in range(r.randint(3, 6))]},
        ),
        "get_invoice": (
            "Fetch an invoice with its line items.",
            obj({"invoice_id": s}, ["invoice_id"]),
            lambda r: {"invoice_id": f"INV-{r.randint(2026000, 2026999)}"},
            lambda r, a: {"invoice_id": a["invoice_id"], "total": {"amount": round(r.uniform(20, 5000), 2), "currency": "USD"},
                          "lines": [{"description": r.choice(["Seats", "API overage", "Storage", "Support add-on"]),
                                     "amount": round(r.uniform(5, 2000), 2)} for _ in range(r.randint(1, 4))],
                          "due": _date(r)},
        ),
    }


_TOOLS = _tool_catalog()
_TOOL_SCHEMA_JSON = {
    name: json.dumps({"type": "function", "function": {"name": name, "description": d, "parameters": p}})
    for name, (d, p, _a, _r) in _TOOLS.items()
}
_TOOL_DEF_OBJ = {name: {"type": "function", "function": {"name": name, "description": d, "parameters": p}}
                 for name, (d, p, _a, _r) in _TOOLS.items()}

_MODELS = [("gpt-4o-2024-08-06", "openai", "openai"), ("gpt-4.1-mini", "openai", "openai"),
           ("claude-sonnet-4-5", "anthropic", "anthropic"), ("gpt-4o", "azure", "openai"),
           ("mistral-large-latest", "mistralai", "mistralai")]
_GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "azure": "azure.ai.openai", "mistralai": "mistral_ai"}
_SCOPES_OI = ["openinference.instrumentation.langchain", "openinference.instrumentation.openai",
              "openinference.instrumentation.llama_index"]
_SCOPE_GENAI = "opentelemetry.instrumentation.openai_v2"


# --------------------------------------------------------------------------- helpers

def _id(rng, nbytes):
    while True:
        v = rng.getrandbits(nbytes * 8)
        if v:
            return v.to_bytes(nbytes, "big")


def _av(v):
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[_av(x) for x in v]))
    raise TypeError(type(v))


def _kvs(d):
    return [KeyValue(key=k, value=_av(v)) for k, v in d.items()]


def _pii(rng, name):
    first, last = name
    parts = []
    if rng.random() < 0.7:
        sep = rng.choice([".", "_", ""])
        parts.append(f"my email is {first.lower()}{sep}{last.lower()}{rng.randint(1, 99)}@{rng.choice(_MAIL_DOMAINS)}")
    if not parts or rng.random() < 0.5:
        fmt = rng.choice(["+1 {a}-555-{b:04d}", "+44 7700 9{c:05d}", "({a}) 555-{b:04d}", "+49 151 {c:05d}{d}"])
        parts.append("you can call me at " + fmt.format(a=rng.randint(201, 989), b=rng.randint(0, 9999),
                                                        c=rng.randint(0, 99999), d=rng.randint(10, 99)))
    return " — " + " and ".join(parts) + "."


class _Ctx:
    """Per-trace choices shared by its spans."""

    def __init__(self, rng, genai):
        self.rng = rng
        self.genai = genai
        self.topic = rng.choice(_TOPICS)
        self.model, self.provider, self.system = rng.choice(_MODELS)
        self.user = (rng.choice(_FIRST), rng.choice(_LAST))
        self.session = f"sess_{rng.getrandbits(64):016x}"
        self.user_id = f"user_{rng.randint(1, 5000):05d}"
        self.trace_id = _id(rng, 16)
        self.tools_offered = rng.sample(self.topic["tools"], min(len(self.topic["tools"]), rng.randint(3, 4)))
        self.temperature = rng.choice([0.0, 0.2, 0.3, 0.7])
        self.max_tokens = rng.choice([512, 800, 1024])

    def fill(self, s):
        if "{" not in s:
            return s
        return _fill(self.rng, s)


def _doc(ctx, idx):
    r = ctx.rng
    t = ctx.topic
    facts = [ctx.fill(f) for f in r.sample(t["facts"], min(len(t["facts"]), r.randint(2, 3)))]
    body = facts + [_sentence(r) for _ in range(r.randint(3, 5))] + r.sample(_FILLER, 1)
    r.shuffle(body)
    doc_id = f"kb-{r.randint(1000, 9999)}"
    title = ctx.fill(r.choice(t["titles"]))
    content = f"{title}. " + " ".join(body)
    score = round(r.uniform(0.62, 0.94) - idx * 0.03, 4)
    meta = json.dumps({"source": f"{t['name']}/handbook.md", "title": title, "section": f"{r.randint(1, 12)}.{r.randint(1, 9)}",
                       "updated_at": _date(r), "lang": "en"})
    return doc_id, content, score, meta


def _span(ctx, name, parent, start, dur_ms, attrs, kind=Span.SPAN_KIND_INTERNAL):
    sp = Span(trace_id=ctx.trace_id, span_id=_id(ctx.rng, 8), name=name, kind=kind,
              start_time_unix_nano=start, end_time_unix_nano=start + int(dur_ms * MS))
    if parent is not None:
        sp.parent_span_id = parent.span_id
    common = {"session.id": ctx.session, "user.id": ctx.user_id} if not ctx.genai else \
        {"gen_ai.conversation.id": ctx.session, "user.id": ctx.user_id}
    common.update(attrs)
    sp.attributes.extend(_kvs(common))
    if not ctx.genai:
        pass
    return sp


def _error(sp, etype, msg, now_ns):
    sp.status.code = Status.STATUS_CODE_ERROR
    sp.status.message = f"{etype}: {msg}"
    ev = sp.events.add()
    ev.name = "exception"
    ev.time_unix_nano = now_ns
    ev.attributes.extend(_kvs({"exception.type": etype, "exception.message": msg,
                               "exception.stacktrace": f"Traceback (most recent call last):\n  File \"agent/runtime.py\", "
                                                       f"line {sp.end_time_unix_nano % 400 + 20}, in _call\n    "
                                                       f"return fn(**kwargs)\n{etype}: {msg}",
                               "exception.escaped": False}))


# ---------------------------------------------------------------- LLM span builders

def _llm_attrs_oi(ctx, messages, out_msg, finish, ptok, ctok):
    """OpenInference LLM attributes: flattened messages, tools, raw request/response JSON."""
    a = {"openinference.span.kind": "LLM", "llm.model_name": ctx.model, "llm.provider": ctx.provider,
         "llm.system": ctx.system,
         "llm.invocation_parameters": json.dumps({"model": ctx.model, "temperature": ctx.temperature,
                                                  "max_tokens": ctx.max_tokens, "tool_choice": "auto"})}
    for i, m in enumerate(messages):
        p = f"llm.input_messages.{i}.message."
        a[p + "role"] = m["role"]
        if m.get("content") is not None:
            a[p + "content"] = m["content"]
        for k, tc in enumerate(m.get("tool_calls", ())):
            q = f"{p}tool_calls.{k}.tool_call."
            a[q + "id"] = tc["id"]
            a[q + "function.name"] = tc["function"]["name"]
            a[q + "function.arguments"] = tc["function"]["arguments"]
        if "tool_call_id" in m:
            a[p + "tool_call_id"] = m["tool_call_id"]
    p = "llm.output_messages.0.message."
    a[p + "role"] = "assistant"
    if out_msg.get("content") is not None:
        a[p + "content"] = out_msg["content"]
    for k, tc in enumerate(out_msg.get("tool_calls", ())):
        q = f"{p}tool_calls.{k}.tool_call."
        a[q + "id"] = tc["id"]
        a[q + "function.name"] = tc["function"]["name"]
        a[q + "function.arguments"] = tc["function"]["arguments"]
    for i, t in enumerate(ctx.tools_offered):
        a[f"llm.tools.{i}.tool.json_schema"] = _TOOL_SCHEMA_JSON[t]
    a["llm.finish_reason"] = finish
    a["llm.token_count.prompt"] = ptok
    a["llm.token_count.completion"] = ctok
    a["llm.token_count.total"] = ptok + ctok
    if ctx.rng.random() < 0.4:
        a["llm.token_count.prompt_details.cache_read"] = (ptok // 128) * 64
    a["input.mime_type"] = "application/json"
    a["input.value"] = json.dumps({"messages": messages, "model": ctx.model, "temperature": ctx.temperature,
                                   "max_tokens": ctx.max_tokens,
                                   "tools": [_TOOL_DEF_OBJ[t] for t in ctx.tools_offered]})
    a["output.mime_type"] = "application/json"
    a["output.value"] = json.dumps({
        "id": f"chatcmpl-{ctx.rng.getrandbits(96):024x}", "object": "chat.completion", "created": 0, "model": ctx.model,
        "choices": [{"index": 0, "message": {"role": "assistant", **out_msg}, "finish_reason": finish}],
        "usage": {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok},
        "system_fingerprint": f"fp_{ctx.rng.getrandbits(40):010x}"})
    a["llm.prompt_template.version"] = f"{ctx.topic['name']}-v{3 + len(ctx.topic['name']) % 4}"
    return a


def _genai_parts(m):
    parts = []
    if m.get("content"):
        if m.get("role") == "tool":
            parts.append({"type": "tool_call_response", "id": m.get("tool_call_id"), "response": m["content"]})
        else:
            parts.append({"type": "text", "content": m["content"]})
    for tc in m.get("tool_calls", ()):
        try:
            args = json.loads(tc["function"]["arguments"])
        except ValueError:
            args = tc["function"]["arguments"]
        parts.append({"type": "tool_call", "id": tc["id"], "name": tc["function"]["name"], "arguments": args})
    return parts


def _llm_attrs_genai(ctx, messages, out_msg, finish, ptok, ctok):
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    gfinish = {"tool_calls": "tool_call"}.get(finish, finish)
    return {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": _GENAI_PROVIDER[ctx.provider],
        "gen_ai.request.model": ctx.model, "gen_ai.response.model": ctx.model,
        "gen_ai.response.id": f"chatcmpl-{ctx.rng.getrandbits(96):024x}",
        "gen_ai.request.temperature": ctx.temperature, "gen_ai.request.max_tokens": ctx.max_tokens,
        "gen_ai.response.finish_reasons": [finish],
        "gen_ai.usage.input_tokens": ptok, "gen_ai.usage.output_tokens": ctok,
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": m["content"]} for m in system]),
        "gen_ai.input.messages": json.dumps([{"role": m["role"], "parts": _genai_parts(m)} for m in rest]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": _genai_parts(out_msg),
                                               "finish_reason": gfinish}]),
        "gen_ai.tool.definitions": json.dumps([{"type": "function", "name": t, "description": _TOOLS[t][0],
                                                "parameters": _TOOLS[t][1]} for t in ctx.tools_offered]),
        "server.address": {"openai": "api.openai.com", "anthropic": "api.anthropic.com",
                           "azure": "contoso.openai.azure.com", "mistralai": "api.mistral.ai"}[ctx.provider],
    }


def _llm_span(ctx, parent, start, dur_ms, messages, out_msg, finish, ptok, ctok):
    if ctx.genai:
        return _span(ctx, f"chat {ctx.model}", parent, start, dur_ms,
                     _llm_attrs_genai(ctx, messages, out_msg, finish, ptok, ctok), kind=Span.SPAN_KIND_CLIENT)
    return _span(ctx, "ChatCompletion", parent, start, dur_ms, _llm_attrs_oi(ctx, messages, out_msg, finish, ptok, ctok))


def _tool_span(ctx, parent, start, dur_ms, name, args_json, call_id, result_json):
    if ctx.genai:
        attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.type": "function",
                 "gen_ai.tool.description": _TOOLS[name][0], "gen_ai.tool.call.id": call_id,
                 "gen_ai.tool.call.arguments": args_json, "gen_ai.tool.call.result": result_json}
        return _span(ctx, f"execute_tool {name}", parent, start, dur_ms, attrs)
    attrs = {"openinference.span.kind": "TOOL", "tool.name": name, "tool.description": _TOOLS[name][0],
             "tool.id": call_id, "input.value": args_json, "input.mime_type": "application/json",
             "output.value": result_json, "output.mime_type": "application/json"}
    return _span(ctx, name, parent, start, dur_ms, attrs)


def _tool_result(r, name, args):
    """A tool's JSON result in the envelope a typical internal API returns (~0.8-1.5 KB)."""
    return {"ok": True, "request_id": f"req_{r.getrandbits(64):016x}", "tool": name,
            "data": _TOOLS[name][3](r, args if isinstance(args, dict) else {}),
            "notes": [_sentence(r) for _ in range(r.randint(1, 3))],
            "source": {"system": f"{name.split('_')[-1]}-service", "region": r.choice(["eu-west-1", "us-east-2", "ap-south-1"]),
                       "cache": r.choice(["hit", "miss"]), "latency_ms": r.randint(8, 900)}}


def _tokens(text_len):
    return max(1, text_len // 4)


# --------------------------------------------------------------------------- traces

def make_trace(rng: random.Random, *, now_ns: int, failure: str | None = None, genai: bool = False) -> list[Span]:
    """One agent turn as a list of spans (root first).  ``failure``: None or one of ``FAILURES``."""
    if failure is not None and failure not in EXPECTED_MODE:
        raise ValueError(f"unknown failure kind {failure!r}; expected one of {FAILURES}")
    ctx = _Ctx(rng, genai)
    t = ctx.topic
    r = rng

    question = ctx.fill(r.choice(t["questions"]))
    if r.random() < 0.2:
        question += _pii(r, ctx.user)
    history = []
    if r.random() < 0.35:
        prev_q = ctx.fill(r.choice(t["questions"]))
        history = [{"role": "user", "content": prev_q},
                   {"role": "assistant", "content": f"{r.choice(_ANSWER_OPENERS)} " + " ".join(_sentence(r) for _ in range(2))}]

    # ------------------------------------------------ timeline (ms offsets from trace start)
    spans = []
    cursor = r.uniform(5, 40)
    retr_ms = r.uniform(60, 600)
    tool_rounds = 1 + (r.random() < 0.25)
    if failure == "loop":
        tool_rounds = 4
    end_offset_ms = r.uniform(200, 3000)  # how long ago the trace ended

    # Build spans with placeholder timing first; root/chain timing is fixed at the end.
    root_attrs_oi = {"openinference.span.kind": "AGENT", "agent.name": ctx.topic["agent"],
                     "input.value": question, "input.mime_type": "text/plain",
                     "metadata": json.dumps({"channel": r.choice(["web", "mobile", "email", "slack"]),
                                             "locale": r.choice(["en-US", "en-GB", "en-IE", "en-IN"]),
                                             "app_version": f"{r.randint(1, 4)}.{r.randint(0, 20)}.{r.randint(0, 9)}"})}

    # RETRIEVER
    empty = failure == "empty_retrieval"
    docs = [] if empty else [_doc(ctx, i) for i in range(5)]
    retr_start = cursor
    cursor += retr_ms + r.uniform(2, 20)

    context_block = "\n\n".join(f"[{d[0]}] {d[1][:220]}" for d in docs) or "(no documents found)"
    system_msg = {"role": "system", "content": t["system"]}
    user_msg = {"role": "user", "content": f"{question}\n\nContext:\n{context_block}"}
    messages = [system_msg] + history + [user_msg]

    llm_specs = []   # (start, dur, messages, out_msg, finish, error)
    tool_specs = []  # (start, dur, name, args_json, call_id, result_json, error)
    called = [n for n in ctx.tools_offered if n != "send_email" and n != "refund_payment"] or ctx.tools_offered
    loop_args = None
    llm_error_at = 0 if failure == "llm_error" and r.random() < 0.5 else (tool_rounds if failure == "llm_error" else None)

    stopped = False
    for rnd in range(tool_rounds):
        name = r.choice(called) if failure != "loop" else called[0]
        args = _TOOLS[name][2](r)
        if failure == "loop":
            loop_args = loop_args or args
            args = loop_args
        args_json = json.dumps(args)
        if failure == "bad_tool_args" and rnd == 0:
            args_json = args_json[: max(3, len(args_json) * 2 // 3)]  # cut mid-string: not valid JSON
        call_id = f"call_{r.getrandbits(96):024x}"
        reasoning = r.choice(["", "Let me look that up.", "I'll check the system for you.", None])
        out_msg = {"content": reasoning or None,
                   "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args_json}}]}
        llm_dur = r.uniform(600, 3500)
        if llm_error_at == rnd:
            llm_specs.append((cursor, r.uniform(200, 30000 if r.random() < 0.3 else 2000), list(messages),
                              None, None, True))
            cursor += llm_specs[-1][1]
            stopped = True
            break
        llm_specs.append((cursor, llm_dur, list(messages), out_msg, "tool_calls", False))
        cursor += llm_dur + r.uniform(1, 15)

        tool_dur = r.uniform(40, 1500)
        if failure == "slow_tool" and rnd == 0:
            tool_dur = r.uniform(14000, 25000)
        tool_error = None
        if failure == "tool_error" and rnd == 0:
            tool_error = r.choice([("TimeoutError", f"{name} did not answer within 10s"),
                                   ("HTTPError", f"503 Service Unavailable from {name} backend"),
                                   ("PermissionError", f"{name}: caller lacks scope '{name}:read'"),
                                   ("KeyError", f"'{r.choice(list(_TOOLS[name][1]['properties']))}'")])
            result_json = json.dumps({"error": f"{tool_error[0]}: {tool_error[1]}"})
        elif failure == "bad_tool_args" and rnd == 0:
            tool_error = None
            result_json = json.dumps({"error": "invalid arguments: could not parse JSON"})
        else:
            result_json = json.dumps(_tool_result(r, name, args))
        tool_specs.append((cursor, tool_dur, name, args_json, call_id, result_json, tool_error))
        cursor += tool_dur + r.uniform(1, 15)
        messages = messages + [{"role": "assistant", "content": out_msg["content"], "tool_calls": out_msg["tool_calls"]},
                               {"role": "tool", "tool_call_id": call_id, "content": result_json}]

    final_answer = None
    if not stopped:
        if llm_error_at == tool_rounds:
            llm_specs.append((cursor, r.uniform(200, 2000), list(messages), None, None, True))
            cursor += llm_specs[-1][1]
            stopped = True
        else:
            cites = r.sample([d[0] for d in docs], min(len(docs), r.randint(1, 2)))
            body = [r.choice(_ANSWER_OPENERS)]
            body += [ctx.fill(f) for f in r.sample(t["facts"], min(2, len(t["facts"])))]
            body += [_sentence(r) for _ in range(r.randint(0, 2))]
            if cites:
                body[-1] = body[-1][:-1] + " " + " ".join(f"[{c}]" for c in cites) + "."
            if tool_specs and not tool_specs[0][6]:
                body.append(f"I also checked with {tool_specs[-1][2].replace('_', ' ')} and the result is consistent.")
            if failure == "tool_error":
                body = [f"I tried to use {tool_specs[0][2].replace('_', ' ')} but it returned an error, so I "
                        "can only share the general policy."] + body[1:]
            closer = r.choice(_ANSWER_CLOSERS)
            if closer:
                body.append(closer)
            answer = " ".join(body)
            finish = "stop"
            if failure == "truncation":
                answer = answer[: len(answer) // 2].rstrip()
                finish = "length"
            final_answer = answer
            llm_specs.append((cursor, r.uniform(900, 5000), list(messages), {"content": answer}, finish, False))
            cursor += llm_specs[-1][1]

    total_ms = cursor + r.uniform(5, 60)
    t0 = now_ns - int((total_ms + end_offset_ms) * MS)

    # ------------------------------------------------ spans
    if genai:
        root = _span(ctx, f"invoke_agent {t['agent']}", None, t0, total_ms,
                     {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": t["agent"],
                      "gen_ai.agent.id": f"agt_{sum(map(ord, t['agent'])):06d}", "gen_ai.provider.name":
                      _GENAI_PROVIDER[ctx.provider], "gen_ai.request.model": ctx.model})
        chain = _span(ctx, f"invoke_workflow {t['name']}_rag", root, t0 + int(2 * MS), total_ms - 4,
                      {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": f"{t['name']}_rag"})
        rattrs = {"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": f"{t['name']}-kb",
                  "gen_ai.retrieval.query.text": question,
                  "gen_ai.retrieval.documents": json.dumps([{"id": d[0], "score": d[2], "content": d[1],
                                                             "metadata": json.loads(d[3])} for d in docs])}
        retr = _span(ctx, f"retrieval {t['name']}-kb", chain, t0 + int(retr_start * MS), retr_ms, rattrs,
                     kind=Span.SPAN_KIND_CLIENT)
    else:
        root = _span(ctx, t["agent"], None, t0, total_ms, root_attrs_oi)
        chain = _span(ctx, f"{t['name']}_rag_chain", root, t0 + int(2 * MS), total_ms - 4,
                      {"openinference.span.kind": "CHAIN", "input.value": json.dumps({"question": question}),
                       "input.mime_type": "application/json"})
        rattrs = {"openinference.span.kind": "RETRIEVER", "input.value": question, "input.mime_type": "text/plain"}
        for i, (did, content, score, meta) in enumerate(docs):
            p = f"retrieval.documents.{i}.document."
            rattrs[p + "id"] = did
            rattrs[p + "content"] = content
            rattrs[p + "score"] = score
            rattrs[p + "metadata"] = meta
        rattrs["output.value"] = json.dumps([d[0] for d in docs])
        rattrs["output.mime_type"] = "application/json"
        retr = _span(ctx, "VectorStoreRetriever", chain, t0 + int(retr_start * MS), retr_ms, rattrs)
    spans += [root, chain, retr]

    # interleave LLM and TOOL spans in time order
    steps = [("llm", s) for s in llm_specs] + [("tool", s) for s in tool_specs]
    steps.sort(key=lambda x: x[1][0])
    failed = False
    for kind, spec in steps:
        if kind == "llm":
            start, dur, msgs, out_msg, finish, err = spec
            ptok = _tokens(sum(len(m.get("content") or "") for m in msgs) + 400 * len(ctx.tools_offered))
            if err:
                sp = _llm_span(ctx, chain, t0 + int(start * MS), dur, msgs, {"content": None}, "error", ptok, 0)
                etype, emsg = r.choice([("RateLimitError", "Rate limit reached for requests (429)"),
                                        ("APITimeoutError", "Request timed out."),
                                        ("InternalServerError", "Error code: 500 - upstream overloaded")])
                if genai:
                    sp.attributes.append(KeyValue(key="error.type", value=_av(etype)))
                _error(sp, etype, emsg, sp.end_time_unix_nano)
                failed = True
            else:
                ctok = _tokens(len(out_msg.get("content") or "") + 60 * len(out_msg.get("tool_calls", ())))
                if finish == "length":
                    ctok = ctx.max_tokens
                sp = _llm_span(ctx, chain, t0 + int(start * MS), dur, msgs, out_msg, finish, ptok, ctok)
                if not genai:
                    sp.status.code = Status.STATUS_CODE_OK
        else:
            start, dur, name, args_json, call_id, result_json, err = spec
            sp = _tool_span(ctx, chain, t0 + int(start * MS), dur, name, args_json, call_id, result_json)
            if err:
                if genai:
                    sp.attributes.append(KeyValue(key="error.type", value=_av(err[0])))
                _error(sp, err[0], err[1], sp.end_time_unix_nano)
        spans.append(sp)

    if final_answer is not None:
        key = "gen_ai.output.messages" if genai else "output.value"
        val = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": final_answer}],
                           "finish_reason": "length" if failure == "truncation" else "stop"}]) if genai else final_answer
        root.attributes.append(KeyValue(key=key, value=_av(val)))
        if not genai:
            root.attributes.append(KeyValue(key="output.mime_type", value=_av("text/plain")))
            chain.attributes.append(KeyValue(key="output.value", value=_av(final_answer)))
            chain.attributes.append(KeyValue(key="output.mime_type", value=_av("text/plain")))
    if failed:
        root.status.code = Status.STATUS_CODE_ERROR
        root.status.message = "agent run failed: LLM call raised"
        chain.status.code = Status.STATUS_CODE_ERROR
        chain.status.message = root.status.message
    return spans


# ------------------------------------------------------------------------- requests

def _resource(service, rng_env):
    return Resource(attributes=_kvs({
        "service.name": service, "service.version": "2.14.0", "deployment.environment.name": rng_env,
        "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python", "telemetry.sdk.version": "1.45.2",
        "openinference.project.name": service, "host.name": f"{service}-7d9f8b6c4-x2k9q",
    }))


def make_requests(n_traces: int, *, seed: int = 1, traces_per_request: int = 8, failure_rate: float = 0.0,
                  service: str = "bench-agent", genai_variant: bool = False, genai_share: float = 0.3,
                  manifest: dict | None = None, now_ns: int | None = None) -> Iterator[ExportTraceServiceRequest]:
    """Yield requests of ``traces_per_request`` whole traces under one ResourceSpans/ScopeSpans.

    ``manifest``, when given, receives ``trace_id_hex -> failure kind (or None)`` for every trace.
    """
    if n_traces < 0 or traces_per_request < 1:
        raise ValueError("n_traces >= 0 and traces_per_request >= 1")
    rng = random.Random(seed)
    fixed_now = now_ns
    done = 0
    while done < n_traces:
        k = min(traces_per_request, n_traces - done)
        now = fixed_now if fixed_now is not None else time.time_ns()
        oi, ga = [], []
        for _ in range(k):
            failure = rng.choice(FAILURES) if failure_rate > 0 and rng.random() < failure_rate else None
            genai = genai_variant and rng.random() < genai_share
            spans = make_trace(rng, now_ns=now, failure=failure, genai=genai)
            (ga if genai else oi).extend(spans)
            if manifest is not None:
                manifest[spans[0].trace_id.hex()] = failure
        done += k
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.CopyFrom(_resource(service, "production"))
        rs.schema_url = "https://opentelemetry.io/schemas/1.37.0"
        if oi:
            ss = rs.scope_spans.add()
            ss.scope.CopyFrom(InstrumentationScope(name=_SCOPES_OI[seed % len(_SCOPES_OI)], version="0.1.57"))
            ss.spans.extend(oi)
        if ga:
            ss = rs.scope_spans.add()
            ss.scope.CopyFrom(InstrumentationScope(name=_SCOPE_GENAI, version="2.3b0"))
            ss.spans.extend(ga)
        yield req


def span_count(req: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def trace_ids_of(req: ExportTraceServiceRequest) -> list[bytes]:
    """Distinct trace ids of a request, in order of first appearance."""
    seen = {}
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                seen.setdefault(sp.trace_id, None)
    return list(seen)


def id_positions(payload: bytes, trace_ids: list[bytes]) -> list[tuple[int, int]]:
    """``(offset, index into trace_ids)`` of every occurrence of each id in ``payload``, in payload order.

    Finding them costs one scan of the payload per trace id (~70 ms for a 2.4 MB request of 79
    traces); a sender computes this once per pooled payload and hands it to every later
    :func:`reidentify` of that payload, which then only splices.
    """
    found = []
    for index, old in enumerate(trace_ids):
        at = payload.find(old)
        while at != -1:
            found.append((at, index))
            at = payload.find(old, at + len(old))
    found.sort()
    return found


def reidentify(payload: bytes, trace_ids: list[bytes], rng: random.Random,
               positions: list[tuple[int, int]] | None = None) -> tuple[bytes, list[bytes]]:
    """Return ``payload`` with every trace id replaced by a fresh random one, and the new ids.

    ``positions`` (from :func:`id_positions`) saves the search. With it, a resend costs one copy of
    the payload (~1 ms for 2.4 MB) instead of one ``bytes.replace`` pass per trace id. That
    difference is CPU the bench client used to take from the collector on this 2-core machine.
    """
    new_ids = [_id(rng, 16) for _ in trace_ids]
    if positions is None:
        positions = id_positions(payload, trace_ids)
    view = memoryview(payload)
    parts: list[bytes | memoryview] = []
    done = 0
    for at, index in positions:
        parts.append(view[done:at])
        parts.append(new_ids[index])
        done = at + len(trace_ids[index])
    parts.append(view[done:])
    return b"".join(parts), new_ids


# ------------------------------------------------------------------------ self-check

def _selfcheck(n_traces: int = 1600) -> None:
    import gzip
    import zlib
    from collections import Counter

    def kind_of(sp):
        for kv in sp.attributes:
            if kv.key == "openinference.span.kind":
                return kv.value.string_value
            if kv.key == "gen_ai.operation.name":
                return "genai:" + kv.value.string_value
        return "?"

    for label, kw in (("openinference", {}), ("openinference, failure_rate=0.2", {"failure_rate": 0.2}),
                      ("genai_variant (30%)", {"genai_variant": True})):
        t = time.perf_counter()
        manifest = {}
        reqs = list(make_requests(n_traces, seed=7, manifest=manifest, **kw))
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        payloads = [q.SerializeToString() for q in reqs]
        ser_s = time.perf_counter() - t
        n_spans = sum(span_count(q) for q in reqs)
        total = sum(map(len, payloads))
        per_span = Counter()
        per_kind_bytes = Counter()
        attrs = 0
        for q in reqs:
            for rs in q.resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        k = kind_of(sp)
                        per_span[k] += 1
                        per_kind_bytes[k] += sp.ByteSize()
                        attrs += len(sp.attributes)
        gz = sum(len(gzip.compress(p, 6)) for p in payloads[:50])
        raw50 = sum(map(len, payloads[:50]))
        pii_traces = set()
        for q in reqs:
            for rs in q.resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        for kv in sp.attributes:
                            v = kv.value.string_value
                            if "my email is" in v or "call me at" in v:
                                pii_traces.add(sp.trace_id)
        pii = len(pii_traces)
        failures = Counter(v for v in manifest.values())
        print(f"== {label}: {n_traces} traces, {len(reqs)} requests")
        print(f"   spans {n_spans} ({n_spans / n_traces:.2f}/trace), {attrs / n_spans:.1f} attributes/span")
        print(f"   wire bytes {total / 1e6:.1f} MB, avg {total / n_spans:,.0f} B/span, "
              f"avg request {total / len(reqs) / 1024:,.0f} KiB")
        print(f"   gzip ratio (first 50 requests) {raw50 / gz:.2f}x; zlib-1 {raw50 / sum(len(zlib.compress(p, 1)) for p in payloads[:50]):.2f}x")
        print(f"   generate {gen_s:.2f}s ({n_spans / gen_s:,.0f} spans/s), serialize {ser_s:.3f}s")
        print("   per kind:", ", ".join(f"{k}={per_span[k]} (~{per_kind_bytes[k] / per_span[k]:,.0f} B)"
                                       for k in sorted(per_span)))
        print(f"   traces with PII in the user message: {pii} ({pii / n_traces:.0%}); failures: {dict(failures)}")
        # sanity: all ids valid, ends after starts, every OI span has a kind
        for q in reqs:
            for rs in q.resource_spans:
                assert any(kv.key == "service.name" for kv in rs.resource.attributes)
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        assert len(sp.trace_id) == 16 and len(sp.span_id) == 8
                        assert sp.end_time_unix_nano >= sp.start_time_unix_nano
                        assert kind_of(sp) != "?"
        assert len(manifest) == n_traces
    # determinism + reidentify
    a = [q.SerializeToString() for q in make_requests(40, seed=3, now_ns=1_800_000_000 * 10**9)]
    b = [q.SerializeToString() for q in make_requests(40, seed=3, now_ns=1_800_000_000 * 10**9)]
    assert a == b, "same seed must give identical requests"
    q = next(make_requests(8, seed=3))
    p = q.SerializeToString()
    ids = trace_ids_of(q)
    p2, new = reidentify(p, ids, random.Random(9))
    q2 = ExportTraceServiceRequest.FromString(p2)
    assert trace_ids_of(q2) == new and len(p2) == len(p) and span_count(q2) == span_count(q)
    replaced = p
    for old, fresh in zip(ids, new):
        replaced = replaced.replace(old, fresh)
    assert p2 == replaced, "splicing must give what one replace per id gives"
    assert reidentify(p, ids, random.Random(9), id_positions(p, ids)) == (p2, new)
    print("determinism and reidentify: ok")


if __name__ == "__main__":
    _selfcheck()
