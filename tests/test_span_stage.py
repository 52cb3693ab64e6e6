"""The span-stage pool: its pipes are widened (the hand-off of 2.4 MB requests costs half as much), and a
worker that dies is replaced."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import random
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import httpx

from proc_helpers import children_of, wait_gone
from test_crash import canary_request
from tracesieve.collector import span_stage


def _pipe_sizes(pool: ProcessPoolExecutor) -> set[int]:
    conns = [getattr(pool, "_call_queue")._reader, getattr(pool, "_result_queue")._reader]
    return {fcntl.fcntl(c.fileno(), fcntl.F_GETPIPE_SZ) for c in conns}


def test_pool_pipes_are_widened_to_one_mebibyte_and_still_carry_requests():
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        assert _pipe_sizes(pool) == {64 * 1024}  # Linux's default, so the assertion below means something
        span_stage._widen_pipes(pool)
        assert _pipe_sizes(pool) == {span_stage._PIPE_SIZE}
        payload = bytes(range(256)) * 10_000   # 2.5 MB, more than one widened pipe holds
        assert pool.submit(bytes, payload).result(timeout=60) == payload
    finally:
        pool.shutdown()


def _span_workers(pid: int) -> list[int]:
    """The span-stage worker processes of `serve` ``pid`` (not multiprocessing's resource tracker)."""
    workers = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"spawn_main" in fh.read():
                    workers.append(child)
        except OSError:
            continue
    return workers


def test_a_span_worker_killed_from_outside_is_replaced_and_logged_and_spans_still_arrive(start_collector):
    """The kernel's OOM killer picks the biggest process, often a span worker: the collector must start a
    new one, answer the requests that worker held with "retry", take the next ones, and say what happened."""
    c = start_collector({"service": {"span_workers": 1, "pipelines": {"traces": {"processors": ["pii"]}}}})
    workers = _span_workers(c.proc.pid)
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    assert wait_gone(workers) == []
    answers = []
    for n in range(3):  # the first request may meet the dead pool: "retry", as exporters do
        request, _ = canary_request(random.Random(n), 5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reply = httpx.post(f"{c.http_url}/v1/traces", content=request.SerializeToString(),
                               headers={"content-type": "application/x-protobuf"}, timeout=30)
            answers.append(reply.status_code)
            if reply.status_code == 200:
                break
            assert reply.status_code == 503 and reply.headers.get("retry-after"), reply.text
            time.sleep(0.2)
    assert answers.count(200) == 3, answers
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 15}]
    new_workers = _span_workers(c.proc.pid)
    assert len(new_workers) == 1 and new_workers != workers
    assert "a span-stage worker died (killed by SIGKILL)" in c.log(), c.log()[-2000:]
    assert c.stop() == 0
