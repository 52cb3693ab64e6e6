"""Free loopback ports for the servers tests start, safe when pytest-xdist runs tests side by side."""

from __future__ import annotations

import itertools
import os
import socket

#: Ports handed out lie below the kernel's ephemeral range (32768 and up on Linux), where ``bind(0)``
#: and outgoing connections take theirs; each xdist worker owns one slice of this range.
_FIRST_PORT = 20000
_PORTS_PER_WORKER = 1500


def _worker_index() -> int:
    """0 for a plain pytest run, N for xdist's worker ``gwN``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


def _candidate_ports() -> itertools.cycle[int]:
    first = _FIRST_PORT + (_worker_index() % 8) * _PORTS_PER_WORKER
    start = first + os.getpid() % _PORTS_PER_WORKER  # a rerun does not begin on the ports the last one left in TIME_WAIT
    return itertools.cycle([*range(start, first + _PORTS_PER_WORKER), *range(first, start)])


_candidates = _candidate_ports()


def free_port() -> int:
    """A loopback TCP port nothing is bound to, for a server the test is about to start.

    ``bind(0)`` alone is not enough once two workers run tests at once: the kernel hands a port out
    again as soon as the probing socket closes, so the other worker's next probe can get the same
    port before this worker's server binds it. Each worker therefore walks its own slice of ports and
    takes the next one that binds (a port still in use, or in TIME_WAIT, does not).
    """
    for _ in range(_PORTS_PER_WORKER):
        port = next(_candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port among this worker's {_PORTS_PER_WORKER}")
