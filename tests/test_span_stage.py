"""The span-stage pool's pipes are widened (the hand-off of 2.4 MB requests costs half as much)."""

from __future__ import annotations

import fcntl
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

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
