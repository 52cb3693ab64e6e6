"""Benchmark of the PII sanitizer (not a test): prints MB/s and spans/s.

    /tmp/venv/bin/python bench/bench_pii.py [--traces 400] [--repeat 5] [--key]

Spans come from bench/generator.py (realistic OpenInference/GenAI agent traces
with a few PII values per trace) decoded by tracesieve.collector.decode, so the
batches are exactly what the collector hands the span stage. When either is
missing, a synthetic SPAN_SCHEMA table of multi-KB agent spans is used instead.
Also reports decode throughput for the same requests, to put the cost of ``pii``
relative to the rest of ingest, and the share of rows the RE2 prefilter lets through.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tracesieve.processors.pii import PiiProcessor  # noqa: E402
from tracesieve.storage.schema import SPAN_SCHEMA, TEXT_SPAN_COLUMNS  # noqa: E402


def generated_batches(n_traces: int) -> tuple[list[pa.Table], float]:
    from generator import make_requests  # type: ignore[import-not-found]

    from tracesieve.collector.decode import decode_request

    requests = list(make_requests(n_traces, seed=7, now_ns=1_760_000_000_000_000_000))
    t0 = time.perf_counter()
    batches = [decode_request(r).batch for r in requests]
    return batches, time.perf_counter() - t0


def synthetic_batches(n_spans: int, per_batch: int = 64) -> list[pa.Table]:
    rng = random.Random(7)
    words = ("the order shipment refund customer account policy invoice status update please "
             "check tool result document summary agent model answer question delivery").split()

    def sentence(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    def pii() -> str:
        return rng.choice([
            f"bob.smith{rng.randint(1, 99)}@example.com", f"+1 (555) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
            "4111 1111 1111 1111", f"10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)}", "ORD-2024-118834",
        ])

    rows = []
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(n_spans):
        msgs = [{"message": {"role": r, "content": sentence(60) + " " + pii() + "\n" + sentence(40)}}
                for r in ("system", "user", "assistant")]
        attrs = {"llm": {"input_messages": msgs, "model_name": "gpt-4o-2024-08-06",
                         "token_count": {"prompt": rng.randint(100, 9000), "completion": rng.randint(10, 900)}},
                 "retrieval": {"documents": [{"document": {"id": f"doc-{j}", "content": sentence(80)}} for j in range(3)]},
                 "input": {"value": json.dumps({"query": sentence(20)})}}
        rows.append({
            "trace_id": f"{rng.getrandbits(128):032x}", "span_id": f"{rng.getrandbits(64):016x}",
            "name": "ChatCompletion", "span_kind": "LLM", "start_time": now, "end_time": now,
            "status_code": "OK", "service_name": "bench-agent", "input_value": sentence(30) + " " + pii(),
            "output_value": sentence(50), "llm_model_name": "gpt-4o-2024-08-06",
            "attributes": json.dumps(attrs, ensure_ascii=False), "resource_attributes": '{"service":{"name":"bench"}}',
            "events": "[]", "links": "[]", "received_at": now,
        })
    return [pa.Table.from_pylist(rows[i:i + per_batch], schema=SPAN_SCHEMA) for i in range(0, len(rows), per_batch)]


def text_bytes(batches: list[pa.Table]) -> int:
    total = 0
    for b in batches:
        for col in TEXT_SPAN_COLUMNS:
            total += sum(buf.size for buf in b.column(col).combine_chunks().buffers()[2:] if buf is not None)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--key", action="store_true", help="keyed pseudonyms (secret_key set)")
    ap.add_argument("--synthetic", action="store_true", help="use the built-in synthetic spans")
    args = ap.parse_args()

    decode_s = None
    if args.synthetic:
        batches, source = synthetic_batches(args.traces * 8), "synthetic"
    else:
        try:
            batches, decode_s = generated_batches(args.traces)
            source = "bench/generator.py + collector.decode"
        except ImportError as exc:
            print(f"generator/decoder unavailable ({exc}); using synthetic spans")
            batches, source = synthetic_batches(args.traces * 8), "synthetic"
    spans = sum(b.num_rows for b in batches)
    nbytes = text_bytes(batches)
    proc = PiiProcessor.from_config({"secret_key": "bench-key"} if args.key else {}, path="processors.pii")
    pattern = proc.sanitizer.trigger_pattern

    # how many rows does the RE2 prefilter let through to Python?
    rows = hit = 0
    for b in batches:
        for col in TEXT_SPAN_COLUMNS:
            m = pc.match_substring_regex(b.column(col), pattern)
            rows += b.num_rows - b.column(col).null_count
            hit += pc.sum(pc.fill_null(m, False)).as_py() or 0

    proc.process(batches[0])  # warm up
    best = float("inf")
    redactions = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = [proc.process(b) for b in batches]
        best = min(best, time.perf_counter() - t0)
    for b in out:
        redactions += sum(sum(json.loads(v).values()) for v in b.column("pii_redactions").to_pylist() if v)

    print(f"source            {source}")
    print(f"spans             {spans} in {len(batches)} batches, {nbytes / spans:,.0f} text bytes/span")
    print(f"prefilter         {hit}/{rows} non-null text cells fire a trigger (reach the exact Python pass) ({100 * hit / max(rows, 1):.1f}%)")
    print(f"redactions        {redactions} ({redactions / spans:.2f}/span)")
    print(f"pii.process       {spans / best:,.0f} spans/s   {nbytes / best / 1e6:,.1f} MB/s   "
          f"(best of {args.repeat}, {best * 1e3:.1f} ms, single thread{', keyed' if args.key else ''})")
    if decode_s:
        print(f"decode (for scale) {spans / decode_s:,.0f} spans/s   -> pii adds {100 * best / decode_s:.0f}% "
              f"of decode time")


if __name__ == "__main__":
    main()
