"""The span-stage pool: its pipes are widened (the hand-off of 2.4 MB requests costs half as much), and a
worker that dies is replaced."""

from __future__ import annotations

import concurrent.futures
import fcntl
import multiprocessing
import os
import random
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import httpx

from proc_helpers import children_of, wait_gone
from test_crash import canary_request
from tracesieve.collector import span_stage
from tracesieve.storage.errors import RetryableError


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


def test_a_stopped_span_worker_gets_retry_after_a_bounded_wait_and_is_replaced(monkeypatch, tmp_path):
    """A worker that is stuck rather than dead (SIGSTOP, a debugger) used to hold every request forever:
    past WORKER_WAIT_SECONDS the request is answered "retry", the stuck workers are killed and new ones run."""
    monkeypatch.setattr(span_stage, "WORKER_WAIT_SECONDS", 2.0)
    stage = span_stage.ProcessSpanStage(1, None, str(tmp_path / "store.duckdb"))
    try:
        stuck = _span_workers(os.getpid())
        assert len(stuck) == 1
        os.kill(stuck[0], signal.SIGSTOP)
        request, _ = canary_request(random.Random(1), 5)
        started = time.monotonic()
        try:
            stage.run(request, None)
            raise AssertionError("a stopped worker answered")
        except RetryableError as exc:
            assert "not answering; retry" in str(exc)
        assert time.monotonic() - started < 15
        assert wait_gone(stuck) == []
        assert stage.run(request, None).batch.num_rows == 5
    finally:
        stage.shutdown()


def test_requests_queued_behind_others_on_a_busy_worker_are_not_taken_for_a_stuck_one(monkeypatch, tmp_path):
    """The wait that ends in "retry" counts from the pool's last finished job: under overload a request may
    queue behind many others, and timing it from its arrival killed healthy workers and refused everything."""
    monkeypatch.setattr(span_stage, "WORKER_WAIT_SECONDS", 1.0)
    stage = span_stage.ProcessSpanStage(1, None, str(tmp_path / "store.duckdb"))
    try:
        workers = _span_workers(os.getpid())
        requests = [canary_request(random.Random(n), 1500)[0] for n in range(48)]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as senders:
            rows = list(senders.map(lambda r: stage.run(r, None).batch.num_rows, requests))
        assert time.monotonic() - started > 3 * 1.0, "the queue was too short to test the wait"
        assert rows == [1500] * len(requests)
        assert _span_workers(os.getpid()) == workers
    finally:
        stage.shutdown()


def test_a_graceful_stop_after_traffic_leaves_healthy_workers_to_exit_on_their_own(start_collector):
    """Shutdown joined the workers while the pool's own thread reaped them: the loser of that race saw a
    worker "still running", logged it as stuck and sent SIGKILL to its (reaped) pid, after any traffic."""
    for attempt in range(3):
        c = start_collector({"service": {"span_workers": 1, "pipelines": {"traces": {"processors": ["pii"]}}}})
        request, _ = canary_request(random.Random(attempt), 5)
        reply = httpx.post(f"{c.http_url}/v1/traces", content=request.SerializeToString(),
                           headers={"content-type": "application/x-protobuf"}, timeout=30)
        assert reply.status_code == 200
        assert c.stop() == 0
        assert "did not finish within" not in c.log() and "killed" not in c.log(), c.log()[-1500:]


def test_serve_stops_within_its_deadline_while_a_span_worker_is_stopped(start_collector):
    """SIGTERM used to wait forever for a stopped worker; now shutdown kills it after a bounded wait, the
    request it held is not acknowledged (so the exporter retries it), and serve exits 0."""
    c = start_collector({"service": {"span_workers": 1, "pipelines": {"traces": {"processors": ["pii"]}}}})
    workers = _span_workers(c.proc.pid)
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGSTOP)
    answers: list[object] = []

    def send() -> None:
        request, _ = canary_request(random.Random(2), 5)
        try:
            answers.append(httpx.post(f"{c.http_url}/v1/traces", content=request.SerializeToString(),
                                      headers={"content-type": "application/x-protobuf"}, timeout=60).status_code)
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)  # the request is in the stopped worker's hands
    started = time.monotonic()
    assert c.stop(timeout=30) == 0
    assert time.monotonic() - started < 25
    sender.join(30)
    assert answers and answers[0] != 200, answers
    assert wait_gone(workers) == []
    assert "a span-stage worker did not finish within" in c.log(), c.log()[-2000:]
    assert "Traceback" not in c.log()
